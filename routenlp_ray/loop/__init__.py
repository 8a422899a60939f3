"""The distillation-routing loop: mine the query log for cheap-tier failures, distill, retrain, publish."""
