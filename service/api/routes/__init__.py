"""The API's routes, one module per resource: thin, domain logic lives elsewhere."""
