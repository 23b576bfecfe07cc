-- One PostgreSQL server, four databases: the service's study records, Optuna's
-- trials, MLflow's backend store, and MLflow's users and permissions (basic-auth).
CREATE DATABASE service;
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
