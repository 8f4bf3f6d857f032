"""The Temporal worker: RunWorkflow, its activities and the step executors."""
