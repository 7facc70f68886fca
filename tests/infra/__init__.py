"""Deployment files (Dockerfiles, compose, Kubernetes, Grafana) and the local proxy."""
