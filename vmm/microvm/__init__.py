"""The micro-VM tier: one KVM micro-VM per connection, restored from a snapshot."""
