"""The coordinator: Flower ServerApp, DP-FedAvg strategies, client-level accounting, MLflow tracking."""
