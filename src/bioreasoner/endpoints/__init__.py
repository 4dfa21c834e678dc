"""Clients of OpenAI-compatible HTTP endpoints (judges, teachers, samplers) share one
hardened HTTP layer: `endpoints.client.EndpointClient`."""
