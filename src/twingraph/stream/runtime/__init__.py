"""The embedded runtime: physical plan, tasks, and the cooperative scheduler that runs a job."""
