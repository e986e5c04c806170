"""lambda_handlers."""
