// Serve module.
