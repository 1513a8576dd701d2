"""The wire: sensor messages, batch messages, outputs, their JSON form and shards."""
