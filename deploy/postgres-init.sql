-- One PostgreSQL server, three databases: the service's study records, Optuna's
-- trials, and MLflow's backend store.
CREATE DATABASE service;
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
