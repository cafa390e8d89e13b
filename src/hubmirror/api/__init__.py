"""HTTP layer: Hub-compatible routes. Only parses requests, calls the library, shapes answers."""
