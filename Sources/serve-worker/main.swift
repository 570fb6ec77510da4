import ServeWorker

// The stock worker: the built-in deployments (echo, sleep, cpu, env) and command deployments.
await WorkerCommand.runFromCommandLine()
