"""The comparison harness behind benchmarks/compare.py: the methods and teachers
a sweep can name (registry), its jobs and how each runs (jobs, ray_backend),
reading the finished runs (runs), and the report of them (report)."""
