// ServeHead module.
