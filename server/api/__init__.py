"""gRPC servicers: thin adapters from RPCs to the replica's propose-and-wait interface."""
