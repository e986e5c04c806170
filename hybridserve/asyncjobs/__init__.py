"""Asynchronous inference (issue 15): jobs submitted to a queue, run by fleet and Lambda
workers, their results written to an object store.

- `queue`: the job queue, with SQS's semantics (visibility timeout, receive count, a dead-letter
  queue after `max_receives`); `LocalQueue` here, `aws.async_queue.SqsQueue` on AWS.
- `store`: inputs, results and job records (`LocalStore` on a folder, `S3Store`).
- `jobs`: submitting (validated, idempotent by id) and a job's status.
- `worker`: running one job exactly once to completion, poison inputs to the dead-letter queue.
- `plan`: the pure decision: fleet and Lambda workers from queue depth and age against the
  per-job deadline.
- `runtime`: the local world's actuation (fleet workers on model-server processes, Lambda
  workers on the emulator) and its control loop.
"""
