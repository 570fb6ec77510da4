import Testing

@testable import ServeCore

@Suite("Deployment resources, threads and spec version")
struct DeploymentConfigTests {
    func deployment(_ options: String, extra: String = "") throws -> DeploymentConfig {
        try parse(
            """
            applications:
              - name: a
                deployments:
                  - name: A
                    handler: echo
                    ray_actor_options: \(options)
            \(extra)
            """
        ).applications[0].ingress
    }

    @Test("resource demand and OMP_NUM_THREADS", arguments: demandCases)
    func demandAndThreads(options: String, demand: ResourceSet, threads: String) throws {
        let deployment = try self.deployment(options)
        #expect(deployment.resourceDemand == demand)
        #expect(deployment.ompNumThreads == threads)
    }

    @Test("the spec version changes with what needs new replicas")
    func specVersionChanges() throws {
        let base = DeploymentConfig(name: "A", handler: "echo")
        #expect(base.specVersion.count == 16)
        let isHex = base.specVersion.allSatisfy { $0.isHexDigit }
        #expect(isHex)
        #expect(base.specVersion == DeploymentConfig(name: "A", handler: "echo").specVersion)

        var other = base
        other.handler = "env"
        #expect(other.specVersion != base.specVersion)

        other = base
        other.actorOptions.numGPUs = 0.5
        #expect(other.specVersion != base.specVersion)

        other = base
        other.actorOptions.numCPUs = 2
        #expect(other.specVersion != base.specVersion)

        other = base
        other.actorOptions.runtimeEnv.envVars["MODEL"] = "large"
        #expect(other.specVersion != base.specVersion)

        other = base
        other.actorOptions.acceleratorType = "A100"
        #expect(other.specVersion != base.specVersion)

        other = base
        other.handler = nil
        other.command = ["python3", "app.py"]
        #expect(other.specVersion != base.specVersion)
        var withHealth = other
        withHealth.healthPath = "/healthz"
        #expect(withHealth.specVersion != other.specVersion)
    }

    @Test("the spec version ignores lightweight fields")
    func specVersionIgnoresLightweightFields() throws {
        let base = DeploymentConfig(name: "A", handler: "echo")
        var other = base
        other.numReplicas = .fixed(10)
        other.userConfig = ["ms": 100]
        other.maxOngoingRequests = 50
        other.maxQueuedRequests = 0
        other.autoscaling = AutoscalingConfig(maxReplicas: 5)
        other.gracefulShutdownTimeoutS = 1
        other.healthCheckPeriodS = 1
        other.healthCheckTimeoutS = 1
        #expect(other.specVersion == base.specVersion)

        // num_cpus: 1 reserves what unset does and gives the same thread count: nothing to restart.
        other = base
        other.actorOptions.numCPUs = 1
        #expect(other.specVersion == base.specVersion)
    }

    @Test("the spec version is the same from YAML and JSON, and across parses")
    func specVersionStable() throws {
        let yaml = try parse(designExample).applications[1].ingress
        let json = try parse(designExampleJSON).applications[1].ingress
        #expect(yaml.specVersion == json.specVersion)
        // A known value: guards against accidental changes to the canonical form, which would
        // make a restarted head replace every replica.
        #expect(DeploymentConfig(name: "A", handler: "echo").specVersion == knownEchoSpecVersion)
    }

    @Test("hand-built deployments follow the parser's replica rules")
    func memberwiseInit() {
        #expect(DeploymentConfig(name: "A", handler: "echo").numReplicas == .fixed(1))
        #expect(DeploymentConfig(name: "A", handler: "echo").initialReplicaCount == 1)
        let auto = DeploymentConfig(name: "A", handler: "echo", numReplicas: .auto)
        #expect(auto.autoscaling == .auto)
        let scaled = DeploymentConfig(
            name: "A", handler: "echo", autoscaling: AutoscalingConfig(minReplicas: 2, maxReplicas: 4)
        )
        #expect(scaled.numReplicas == nil)
        #expect(scaled.initialReplicaCount == 2)
        #expect(scaled.isAutoscaling)
        #expect(DeploymentConfig(name: "A", handler: "echo", numReplicas: .fixed(3)).initialReplicaCount == 3)
    }
}

let knownEchoSpecVersion = "d40a75a56f66fd96"

let demandCases: [(options: String, demand: ResourceSet, threads: String)] = [
        ("{num_cpus: 2}", ["CPU": 2], "2"),
        ("{}", ["CPU": 1], "1"),
        ("{num_cpus: 0.5}", ["CPU": 0.5], "1"),
        ("{num_cpus: 2.7, num_gpus: 1}", ["CPU": 2.7, "GPU": 1], "2"),
        ("{num_cpus: 0}", [:], "1"),
        ("{num_cpus: 4, runtime_env: {env_vars: {OMP_NUM_THREADS: \"12\"}}}", ["CPU": 4], "12"),
        ("{num_gpus: 0.5, accelerator_type: A100}", ["CPU": 1, "GPU": 0.5, "accelerator_type:A100": 1], "1"),
        ("{memory: 1073741824, resources: {custom_resource: 2}}", ["CPU": 1, "memory": 1_073_741_824, "custom_resource": 2], "1"),
    ]
