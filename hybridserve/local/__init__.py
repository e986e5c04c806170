"""Local mode: stand-ins for the AWS services, so the same code paths run on one machine."""
