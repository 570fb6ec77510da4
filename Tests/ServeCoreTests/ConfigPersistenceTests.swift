import Testing

@testable import ServeCore

/// The head keeps the deployed config in its state dir as `ServeConfig.jsonValue`; a restarted
/// head reads it back with `ConfigParser.parse(_, knownHandlers: nil)`. Whatever was deployed
/// must come back equal, field for field.
@Suite("Config persistence")
struct ConfigPersistenceTests {
    private func roundTrip(_ config: ServeConfig) throws -> ServeConfig {
        try ConfigParser.parse(config.jsonValue.jsonString(), knownHandlers: nil)
    }

    @Test("the DESIGN.md example, num_replicas auto, and every optional field come back equal")
    func examples() throws {
        let texts = [
            designExample,
            """
            applications:
              - name: a
                ingress: B
                idempotent: true
                deployments:
                  - {name: A, handler: echo, num_replicas: auto, user_config: {k: [1, 2.5, "x", null, true]}}
                  - name: B
                    handler: sleep
                    autoscaling_config: {min_replicas: 0, max_replicas: 3, downscale_to_zero_delay_s: 5,
                      upscaling_factor: 2, downscaling_factor: 0.5, aggregation_function: max,
                      panic_window_s: 6, panic_threshold: 2}
                    placement_strategy: spread
                    max_replicas_per_node: 2
                    ray_actor_options: {object_store_memory: 10, num_gpus: 2}
              - name: "quotes \\" and \\\\ and é"
                route_prefix: /q
                deployments:
                  - name: C
                    command: ["sh", "-c", "echo \\"$PORT\\"\\n"]
                    health_path: /ready
                    max_queued_requests: 0
                    ray_actor_options: {runtime_env: {env_vars: {A: "1", "B_2": "line\\nbreak"}, working_dir: /tmp}}
            """,
            #"{"applications": [], "http_options": {"request_timeout_s": 0.25, "max_body_bytes": 1}}"#,
        ]
        for text in texts {
            let config = try ConfigParser.parse(text, knownHandlers: ["echo", "sleep"])
            #expect(try self.roundTrip(config) == config, "\(text)")
        }
    }

    @Test("a saved config is read back without knowing its handlers; a fresh deploy still checks them")
    func handlersUnchecked() throws {
        let config = try ConfigParser.parse(
            "applications: [{name: a, deployments: [{name: A, handler: custom_model}]}]", knownHandlers: ["custom_model"])
        #expect(try self.roundTrip(config) == config)
        #expect(throws: ConfigError.self) {
            try ConfigParser.parse(config.jsonValue.jsonString(), knownHandlers: ["echo"])
        }
    }

    @Test("500 random valid configs come back equal")
    func randomConfigs() throws {
        var generator = SeededGenerator(seed: 0xC0FF_1D)
        for _ in 0..<500 {
            let config = RandomConfig.make(using: &generator)
            let text = config.jsonValue.jsonString()
            let parsed = try ConfigParser.parse(text, knownHandlers: nil)
            #expect(parsed == config, "\(text)")
        }
    }
}

/// Random configs that pass validation, built from values rather than text.
enum RandomConfig {
    static func make(maxApplications: Int = 3, maxDeployments: Int = 3, using generator: inout SeededGenerator) -> ServeConfig {
        var config = ServeConfig()
        config.httpOptions.port = Int.random(in: 0...65535, using: &generator)
        config.httpOptions.maxBodyBytes = Int.random(in: 1...(1 << 40), using: &generator)
        if Bool.random(using: &generator) { config.httpOptions.requestTimeoutS = self.positive(&generator) }
        for appIndex in 0..<Int.random(in: 0...maxApplications, using: &generator) {
            var deployments: [DeploymentConfig] = []
            for index in 0..<Int.random(in: 1...maxDeployments, using: &generator) {
                deployments.append(self.deployment("D\(index)\(self.word(&generator))", using: &generator))
            }
            config.applications.append(ApplicationConfig(
                name: "app\(appIndex)-\(self.word(&generator))",
                routePrefix: appIndex == 0 ? "/" : "/p\(appIndex)/\(self.word(&generator))",
                deployments: deployments))
        }
        return config
    }

    static func deployment(_ name: String, using generator: inout SeededGenerator) -> DeploymentConfig {
        var deployment = DeploymentConfig(name: name)
        if Bool.random(using: &generator) {
            deployment.handler = ["echo", "sleep", "my_model", self.word(&generator)].randomElement(using: &generator)!
        } else {
            deployment.command = ["python3", self.word(&generator), "--x=\"\\ \n\u{1}"]
            if Bool.random(using: &generator) { deployment.healthPath = "/h" + self.word(&generator) }
        }
        switch Int.random(in: 0..<3, using: &generator) {
        case 0:
            deployment.numReplicas = .fixed(Int.random(in: 0...50, using: &generator))
            deployment.autoscaling = nil
        case 1:
            deployment.numReplicas = .auto
            deployment.autoscaling = self.autoscaling(base: .auto, using: &generator)
        default:
            deployment.numReplicas = nil
            deployment.autoscaling = self.autoscaling(base: AutoscalingConfig(), using: &generator)
        }
        deployment.maxOngoingRequests = Int.random(in: 1...1000, using: &generator)
        deployment.maxQueuedRequests = Int.random(in: -1...1000, using: &generator)
        if Bool.random(using: &generator) {
            deployment.userConfig = .object(["w": .string(self.word(&generator)), "n": .number(self.positive(&generator))])
        }
        deployment.actorOptions = ActorOptions(
            numCPUs: Bool.random(using: &generator) ? self.resourceAmount(&generator) : nil,
            numGPUs: [0, 0.25, 0.5, 1, 2].randomElement(using: &generator)!,
            memory: Double(Int.random(in: 0...(1 << 40), using: &generator)),
            resources: Bool.random(using: &generator) ? [self.word(&generator): self.resourceAmount(&generator)] : [:],
            acceleratorType: Bool.random(using: &generator) ? "A100" : nil,
            objectStoreMemory: Bool.random(using: &generator) ? 1024 : nil,
            runtimeEnv: RuntimeEnv(
                envVars: Bool.random(using: &generator) ? ["K_" + self.word(&generator): "v \"q\" é\n"] : [:],
                workingDir: Bool.random(using: &generator) ? "./w" : nil))
        deployment.gracefulShutdownTimeoutS = self.positive(&generator)
        deployment.healthCheckPeriodS = self.positive(&generator)
        deployment.healthCheckTimeoutS = self.positive(&generator)
        deployment.placementStrategy = Bool.random(using: &generator) ? .pack : .spread
        deployment.maxReplicasPerNode = Bool.random(using: &generator) ? Int.random(in: 1...9, using: &generator) : nil
        return deployment
    }

    static func autoscaling(base: AutoscalingConfig, using generator: inout SeededGenerator) -> AutoscalingConfig {
        var config = base
        config.minReplicas = Int.random(in: 0...5, using: &generator)
        config.maxReplicas = Int.random(in: max(1, config.minReplicas)...20, using: &generator)
        if Bool.random(using: &generator) {
            config.initialReplicas = Int.random(in: config.minReplicas...config.maxReplicas, using: &generator)
        }
        config.targetOngoingRequests = self.positive(&generator)
        config.upscaleDelayS = self.positive(&generator)
        config.downscaleDelayS = self.positive(&generator)
        if Bool.random(using: &generator) { config.downscaleToZeroDelayS = self.positive(&generator) }
        config.smoothingFactor = self.positive(&generator)
        if Bool.random(using: &generator) { config.upscalingFactor = self.positive(&generator) }
        if Bool.random(using: &generator) { config.downscalingFactor = self.positive(&generator) }
        config.metricsIntervalS = self.positive(&generator)
        config.lookBackPeriodS = self.positive(&generator) + 1
        config.aggregationFunction = ["mean", "max", "min"].randomElement(using: &generator)!
        if Bool.random(using: &generator) {
            config.panicWindowS = config.lookBackPeriodS / 2
            config.panicThreshold = 1 + self.positive(&generator)
        }
        return config
    }

    /// A positive number with a fractional part that only exact printing keeps.
    static func positive(_ generator: inout SeededGenerator) -> Double {
        Double(Int.random(in: 1...100_000, using: &generator)) / [1, 3, 7, 1000].randomElement(using: &generator)!
    }

    /// A resource amount: a whole number of 1/10,000 steps, as the parser requires.
    static func resourceAmount(_ generator: inout SeededGenerator) -> Double {
        Double(Int.random(in: 1...100_000_000, using: &generator)) / 10_000
    }

    static func word(_ generator: inout SeededGenerator) -> String {
        String((0..<Int.random(in: 1...8, using: &generator)).map { _ in "abcxyz_19".randomElement(using: &generator)! })
    }
}
