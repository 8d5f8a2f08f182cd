"""HTTP plumbing: JSON and compressed responses, header negotiation, the
request log middleware, error handlers. Nothing here knows about SQL or snapshots."""
