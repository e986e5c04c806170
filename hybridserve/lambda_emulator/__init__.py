"""The Lambda emulator: AWS Lambda's Invoke API on this machine (server.py), each execution
environment a worker process (worker.py) with a real cold start; local `serve` spills to it
through the same aiobotocore invoker as AWS Lambda."""
