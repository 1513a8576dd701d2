"""Every stream's recurrent state: the store, and its snapshots on disk."""
