/// A config written back out as the JSON a user could have deployed: every field explicit, so
/// `ConfigParser.parse` reads it back into an equal `ServeConfig` (the head keeps the deployed
/// config in its state dir this way, and a restarted head deploys exactly what was running).
extension ServeConfig {
    public var jsonValue: JSONValue {
        .object([
            "proxy_location": .string(self.proxyLocation.rawValue),
            "http_options": self.httpOptions.jsonValue,
            "applications": .array(self.applications.map(\.jsonValue)),
        ])
    }
}

extension HTTPOptions {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = [
            "host": .string(self.host),
            "port": .number(Double(self.port)),
            "max_body_bytes": .number(Double(self.maxBodyBytes)),
        ]
        if let timeout = self.requestTimeoutS { object["request_timeout_s"] = .number(timeout) }
        return .object(object)
    }
}

extension ApplicationConfig {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = [
            "name": .string(self.name),
            "route_prefix": .string(self.routePrefix),
            "idempotent": .bool(self.idempotent),
            "deployments": .array(self.deployments.map(\.jsonValue)),
        ]
        if let ingress = self.ingressName { object["ingress"] = .string(ingress) }
        return .object(object)
    }
}

extension DeploymentConfig {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = [
            "name": .string(self.name),
            "max_ongoing_requests": .number(Double(self.maxOngoingRequests)),
            "max_queued_requests": .number(Double(self.maxQueuedRequests)),
            "ray_actor_options": self.actorOptions.jsonValue,
            "graceful_shutdown_timeout_s": .number(self.gracefulShutdownTimeoutS),
            "health_check_period_s": .number(self.healthCheckPeriodS),
            "health_check_timeout_s": .number(self.healthCheckTimeoutS),
            "placement_strategy": .string(self.placementStrategy.rawValue),
        ]
        if let handler = self.handler { object["handler"] = .string(handler) }
        if let command = self.command { object["command"] = .array(command.map { .string($0) }) }
        if let healthPath = self.healthPath { object["health_path"] = .string(healthPath) }
        switch self.numReplicas {
        case .fixed(let count): object["num_replicas"] = .number(Double(count))
        case .auto: object["num_replicas"] = "auto"
        case nil: break
        }
        // Written out in full, whether `num_replicas: auto` set them or `autoscaling_config` did:
        // explicit fields leave nothing to either default.
        if let autoscaling = self.autoscaling { object["autoscaling_config"] = autoscaling.jsonValue }
        if let userConfig = self.userConfig { object["user_config"] = userConfig }
        if let limit = self.maxReplicasPerNode { object["max_replicas_per_node"] = .number(Double(limit)) }
        return .object(object)
    }
}

extension AutoscalingConfig {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = [
            "min_replicas": .number(Double(self.minReplicas)),
            "max_replicas": .number(Double(self.maxReplicas)),
            "target_ongoing_requests": .number(self.targetOngoingRequests),
            "upscale_delay_s": .number(self.upscaleDelayS),
            "downscale_delay_s": .number(self.downscaleDelayS),
            "smoothing_factor": .number(self.smoothingFactor),
            "metrics_interval_s": .number(self.metricsIntervalS),
            "look_back_period_s": .number(self.lookBackPeriodS),
            "aggregation_function": .string(self.aggregationFunction),
        ]
        if let value = self.initialReplicas { object["initial_replicas"] = .number(Double(value)) }
        if let value = self.downscaleToZeroDelayS { object["downscale_to_zero_delay_s"] = .number(value) }
        if let value = self.upscalingFactor { object["upscaling_factor"] = .number(value) }
        if let value = self.downscalingFactor { object["downscaling_factor"] = .number(value) }
        if let value = self.panicWindowS { object["panic_window_s"] = .number(value) }
        if let value = self.panicThreshold { object["panic_threshold"] = .number(value) }
        return .object(object)
    }
}

extension ActorOptions {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = [
            "num_gpus": .number(self.numGPUs),
            "memory": .number(self.memory),
            "resources": .object(self.resources.mapValues { .number($0) }),
            "runtime_env": self.runtimeEnv.jsonValue,
        ]
        if let value = self.numCPUs { object["num_cpus"] = .number(value) }
        if let value = self.acceleratorType { object["accelerator_type"] = .string(value) }
        if let value = self.objectStoreMemory { object["object_store_memory"] = .number(value) }
        return .object(object)
    }
}

extension RuntimeEnv {
    var jsonValue: JSONValue {
        var object: [String: JSONValue] = ["env_vars": .object(self.envVars.mapValues { .string($0) })]
        if let workingDir = self.workingDir { object["working_dir"] = .string(workingDir) }
        return .object(object)
    }
}
