import Testing

@testable import ServeCore

/// The example config of DESIGN.md "Configuration", verbatim.
let designExample = """
    http_options: {host: 0.0.0.0, port: 8000, request_timeout_s: 60}
    applications:
      - name: hello
        route_prefix: /hello
        deployments:
          - name: Hello
            handler: echo          # a Swift deployment registered under this name
            num_replicas: 2        # or "auto" (autoscaling with defaults)
      - name: model
        route_prefix: /predict
        deployments:
          - name: Model
            command: ["python3", "model.py"]   # one child process per replica
            max_ongoing_requests: 8
            max_queued_requests: 100
            autoscaling_config:
              min_replicas: 0
              initial_replicas: 1
              max_replicas: 5
              target_ongoing_requests: 2   # also accepted: target_num_ongoing_requests_per_replica
              upscale_delay_s: 30
              downscale_delay_s: 600
              smoothing_factor: 1.0
              metrics_interval_s: 10
              look_back_period_s: 30
            ray_actor_options:             # also accepted: actor_options
              num_cpus: 2
              num_gpus: 0.5
              memory: 2147483648
              resources: {custom_resource: 2}
              accelerator_type: A100
              runtime_env: {env_vars: {MODEL: small}, working_dir: ./examples}
            graceful_shutdown_timeout_s: 20
            health_check_period_s: 10
            health_check_timeout_s: 30
    """

/// The same config as JSON.
let designExampleJSON = """
    {
      "http_options": {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 60},
      "applications": [
        {"name": "hello", "route_prefix": "/hello",
         "deployments": [{"name": "Hello", "handler": "echo", "num_replicas": 2}]},
        {"name": "model", "route_prefix": "/predict",
         "deployments": [{
           "name": "Model",
           "command": ["python3", "model.py"],
           "max_ongoing_requests": 8,
           "max_queued_requests": 100,
           "autoscaling_config": {
             "min_replicas": 0, "initial_replicas": 1, "max_replicas": 5,
             "target_ongoing_requests": 2, "upscale_delay_s": 30, "downscale_delay_s": 600,
             "smoothing_factor": 1.0, "metrics_interval_s": 10, "look_back_period_s": 30
           },
           "ray_actor_options": {
             "num_cpus": 2, "num_gpus": 0.5, "memory": 2147483648,
             "resources": {"custom_resource": 2}, "accelerator_type": "A100",
             "runtime_env": {"env_vars": {"MODEL": "small"}, "working_dir": "./examples"}
           },
           "graceful_shutdown_timeout_s": 20,
           "health_check_period_s": 10,
           "health_check_timeout_s": 30
         }]}
      ]
    }
    """

let stockHandlers: Set<String> = ["echo", "sleep", "cpu", "env"]

func parse(_ text: String) throws(ConfigError) -> ServeConfig {
    try ConfigParser.parse(text, knownHandlers: stockHandlers)
}

/// The problems a config is rejected with (empty if it is accepted).
func problems(_ text: String) -> [String] {
    do {
        _ = try parse(text)
        return []
    } catch {
        return error.problems.map(\.description)
    }
}

@Suite("Config parsing")
struct ConfigTests {
    @Test("DESIGN.md's example parses with every value right")
    func designExampleParses() throws {
        let config = try parse(designExample)
        #expect(config.httpOptions == HTTPOptions(host: "0.0.0.0", port: 8000, requestTimeoutS: 60))
        #expect(config.httpOptions.maxBodyBytes == 100 * 1024 * 1024)
        #expect(config.applications.map(\.name) == ["hello", "model"])

        let hello = try #require(config.application(named: "hello"))
        #expect(hello.routePrefix == "/hello")
        #expect(hello.deployments.count == 1)
        #expect(hello.ingress.name == "Hello")
        #expect(hello.ingress.handler == "echo")
        #expect(hello.ingress.command == nil)
        #expect(hello.ingress.numReplicas == .fixed(2))
        #expect(hello.ingress.autoscaling == nil)
        #expect(hello.ingress.initialReplicaCount == 2)
        #expect(hello.ingress.maxOngoingRequests == 5)
        #expect(hello.ingress.maxQueuedRequests == -1)
        #expect(hello.ingress.actorOptions == ActorOptions())

        let model = try #require(config.application(named: "model")?.deployment(named: "Model"))
        #expect(config.applications[1].routePrefix == "/predict")
        #expect(model.handler == nil)
        #expect(model.command == ["python3", "model.py"])
        #expect(model.healthPath == nil)
        #expect(model.numReplicas == nil)
        #expect(model.maxOngoingRequests == 8)
        #expect(model.maxQueuedRequests == 100)
        #expect(model.userConfig == nil)
        #expect(
            model.autoscaling
                == AutoscalingConfig(
                    minReplicas: 0, initialReplicas: 1, maxReplicas: 5, targetOngoingRequests: 2,
                    upscaleDelayS: 30, downscaleDelayS: 600, smoothingFactor: 1.0, metricsIntervalS: 10,
                    lookBackPeriodS: 30
                )
        )
        #expect(model.initialReplicaCount == 1)
        #expect(
            model.actorOptions
                == ActorOptions(
                    numCPUs: 2, numGPUs: 0.5, memory: 2_147_483_648, resources: ["custom_resource": 2],
                    acceleratorType: "A100",
                    runtimeEnv: RuntimeEnv(envVars: ["MODEL": "small"], workingDir: "./examples")
                )
        )
        #expect(model.gracefulShutdownTimeoutS == 20)
        #expect(model.healthCheckPeriodS == 10)
        #expect(model.healthCheckTimeoutS == 30)
        #expect(
            model.resourceDemand
                == ["CPU": 2, "GPU": 0.5, "memory": 2_147_483_648, "custom_resource": 2, "accelerator_type:A100": 1]
        )
        #expect(model.ompNumThreads == "2")
    }

    @Test("the JSON form parses to the same config")
    func jsonForm() throws {
        #expect(try parse(designExampleJSON) == parse(designExample))
    }

    @Test("YAML flow style that looks like JSON is still YAML")
    func yamlFlowStyle() throws {
        let config = try parse("{applications: [{name: a, deployments: [{name: A, handler: echo}]}]}")
        #expect(config.applications.first?.ingress.handler == "echo")
    }

    @Test("omitted fields take the guide's and Ray's defaults")
    func defaults() throws {
        let config = try parse(
            """
            applications:
              - name: app
                deployments:
                  - name: D
                    handler: echo
                  - name: Scaled
                    handler: echo
                    autoscaling_config: {}
            """
        )
        #expect(config.httpOptions == HTTPOptions())
        #expect(config.httpOptions.host == "0.0.0.0")
        #expect(config.httpOptions.port == 8000)
        #expect(config.httpOptions.requestTimeoutS == nil)
        let app = config.applications[0]
        #expect(app.routePrefix == "/")
        let plain = app.deployments[0]
        #expect(plain.numReplicas == .fixed(1))  // the guide: "By default, num_replicas is 1."
        #expect(plain.autoscaling == nil)
        #expect(plain.maxOngoingRequests == 5)
        #expect(plain.maxQueuedRequests == -1)
        #expect(plain.gracefulShutdownTimeoutS == 20)
        #expect(plain.healthCheckPeriodS == 10)
        #expect(plain.healthCheckTimeoutS == 30)
        #expect(plain.resourceDemand == ["CPU": 1])  // "each replica reserves one CPU"
        #expect(plain.ompNumThreads == "1")

        let scaled = try #require(app.deployments[1].autoscaling)
        #expect(app.deployments[1].numReplicas == nil)
        #expect(scaled.minReplicas == 1)
        #expect(scaled.initialReplicas == nil)
        #expect(scaled.initialReplicaCount == 1)
        #expect(scaled.maxReplicas == 1)
        #expect(scaled.targetOngoingRequests == 1)
        #expect(scaled.upscaleDelayS == 30)
        #expect(scaled.downscaleDelayS == 600)
        #expect(scaled.downscaleToZeroDelayS == nil)
        #expect(scaled.smoothingFactor == 1.0)
        #expect(scaled.effectiveUpscalingFactor == 1.0)
        #expect(scaled.effectiveDownscalingFactor == 1.0)
        #expect(scaled.metricsIntervalS == 10)
        #expect(scaled.lookBackPeriodS == 30)
        #expect(scaled.aggregationFunction == "mean")
        #expect(scaled == AutoscalingConfig())
    }

    @Test("an empty application list is a valid config")
    func emptyConfig() throws {
        #expect(try parse("applications: []") == ServeConfig())
        #expect(try parse(#"{"applications": []}"#) == ServeConfig())
    }

    @Test("num_replicas: auto autoscales with min 1, max 100, target 2")
    func numReplicasAuto() throws {
        let config = try parse(
            """
            applications:
              - name: app
                deployments:
                  - {name: A, handler: echo, num_replicas: auto}
                  - name: B
                    handler: echo
                    num_replicas: auto
                    autoscaling_config: {max_replicas: 10, upscale_delay_s: 5}
            """
        )
        let a = config.applications[0].deployments[0]
        #expect(a.numReplicas == .auto)
        #expect(a.autoscaling == AutoscalingConfig.auto)
        #expect(a.autoscaling?.minReplicas == 1)
        #expect(a.autoscaling?.maxReplicas == 100)
        #expect(a.autoscaling?.targetOngoingRequests == 2)
        #expect(a.initialReplicaCount == 1)
        let b = config.applications[0].deployments[1]
        #expect(b.numReplicas == .auto)
        #expect(b.autoscaling?.maxReplicas == 10)
        #expect(b.autoscaling?.upscaleDelayS == 5)
        #expect(b.autoscaling?.targetOngoingRequests == 2)  // still auto's default
    }

    @Test("aliases: the guide's and Ray's older names are accepted")
    func aliases() throws {
        let config = try parse(
            """
            applications:
              - name: app
                deployments:
                  - name: A
                    handler: echo
                    max_concurrent_queries: 7
                    autoscaling_config:
                      target_num_ongoing_requests_per_replica: 10
                      upscale_smoothing_factor: 2
                      downscale_smoothing_factor: 0.5
                      smoothing_factor: 1.5
                    actor_options: {num_cpus: 3}
            """
        )
        let a = config.applications[0].ingress
        #expect(a.maxOngoingRequests == 7)
        #expect(a.autoscaling?.targetOngoingRequests == 10)
        #expect(a.autoscaling?.upscalingFactor == 2)
        #expect(a.autoscaling?.downscalingFactor == 0.5)
        #expect(a.autoscaling?.effectiveUpscalingFactor == 2)
        #expect(a.autoscaling?.effectiveDownscalingFactor == 0.5)
        #expect(a.actorOptions.numCPUs == 3)
    }

    @Test("a field given under two names is refused")
    func aliasConflict() {
        #expect(
            problems(
                """
                applications:
                  - name: app
                    deployments:
                      - name: A
                        handler: echo
                        ray_actor_options: {num_cpus: 1}
                        actor_options: {num_cpus: 2}
                        autoscaling_config: {target_ongoing_requests: 1, target_num_ongoing_requests_per_replica: 2}
                """
            ) == [
                "applications[0].deployments[0].actor_options: same field as `ray_actor_options`; give only one of them",
                "applications[0].deployments[0].autoscaling_config.target_num_ongoing_requests_per_replica: "
                    + "same field as `target_ongoing_requests`; give only one of them",
            ]
        )
    }

    @Test("user_config is kept as JSON, and YAML ints are fine for doubles")
    func userConfigAndNumbers() throws {
        let config = try parse(
            """
            http_options: {request_timeout_s: 5, port: 0x1F40}
            applications:
              - name: app
                route_prefix: /app
                deployments:
                  - name: A
                    handler: sleep
                    user_config: {ms: 250, tags: [a, b], nested: {on: true}}
                    graceful_shutdown_timeout_s: 1
                    graceful_shutdown_wait_loop_s: 0.5
            """
        )
        #expect(config.httpOptions.requestTimeoutS == 5)
        #expect(config.httpOptions.port == 8000)
        let a = config.applications[0].ingress
        #expect(a.userConfig == ["ms": 250, "tags": ["a", "b"], "nested": ["on": true]])
        #expect(a.gracefulShutdownTimeoutS == 1)
    }

    @Test("command deployments take a health_path")
    func commandDeployment() throws {
        let config = try parse(
            """
            applications:
              - name: py
                deployments:
                  - name: Flask
                    command: [python3, app.py, --port, "8080"]
                    health_path: /healthz
            """
        )
        let flask = config.applications[0].ingress
        #expect(flask.command == ["python3", "app.py", "--port", "8080"])
        #expect(flask.healthPath == "/healthz")
        #expect(flask.handler == nil)
    }
}
