"""What each command does, once its input has been checked: these modules import
torch, Ray, MLflow or FastAPI, so ``service.cli`` loads them only when their command
runs (``service.commands.options.run_action``)."""
