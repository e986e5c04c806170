"""The model side: build, compress, package, profile and run models (the predictors issue).

Shared by the VM model server and the Lambda handler. Until it lands, the simulator reads the
serving profile in `hybridserve/data/profile-distilbert-int8.yaml`.
"""
