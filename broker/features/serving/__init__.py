"""Serving: functions as scaled process replicas (Knative Serving shaped): autoscaler, invoker."""
