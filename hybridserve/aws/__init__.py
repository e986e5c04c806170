"""AWS backend: EC2 fleet and Lambda spill function, reconciled from tags (boto3, optional extra)."""
