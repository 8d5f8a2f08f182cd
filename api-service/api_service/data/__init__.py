"""The data the API serves: verified snapshots, opened read-only, swapped in
without pulling data from under a running query."""
