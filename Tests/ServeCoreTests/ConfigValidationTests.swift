import Testing

@testable import ServeCore

@Suite("Config validation")
struct ConfigValidationTests {
    @Test("a config with several mistakes reports all of them, each with its path")
    func everyProblemWithItsPath() {
        let found = problems(
            """
            http_options: {port: 70000, request_timeout_s: 0, max_body_bytes: "big"}
            applications:
              - name: hello
                route_prefix: hello
                deployments:
                  - name: Hello
                    handler: echo
                    num_replica: 2
                    max_ongoing_requests: 0
              - name: model
                route_prefix: /predict
                deployments:
                  - name: Model
                    command: ["python3", "model.py"]
                    max_queued_requests: -5
                    autoscaling_config:
                      min_replicas: 3
                      max_replicas: 2
                      target_ongoing_requests: "two"
                      smoothing_factor: 0
                      aggregation_function: median
                    ray_actor_options:
                      num_cpus: -1
                      num_gpus: 0.5
                      resources: {custom: -2, CPU: 4}
                      runtime_env: {env_vars: {OMP_NUM_THREADS: 4}}
            """
        )
        #expect(
            found == [
                "http_options.port: must be between 0 and 65535, not 70000",
                "http_options.request_timeout_s: must be greater than 0, not 0",
                #"http_options.max_body_bytes: must be a whole number, not a string ("big")"#,
                #"applications[0].route_prefix: must start with "/", not "hello""#,
                "applications[0].deployments[0].num_replica: unknown field (did you mean num_replicas?)",
                "applications[0].deployments[0].max_ongoing_requests: must be at least 1, not 0",
                "applications[1].deployments[0].autoscaling_config.max_replicas: must be at least min_replicas (3)",
                #"applications[1].deployments[0].autoscaling_config.target_ongoing_requests: must be a number, not a string ("two")"#,
                "applications[1].deployments[0].autoscaling_config.smoothing_factor: must be greater than 0, not 0",
                #"applications[1].deployments[0].autoscaling_config.aggregation_function: must be mean, max or min, not "median""#,
                "applications[1].deployments[0].max_queued_requests: must be -1 (unbounded) or at least 0 (0: no queue), not -5",
                "applications[1].deployments[0].ray_actor_options.num_cpus: must be at least 0, not -1",
                "applications[1].deployments[0].ray_actor_options.resources.custom: must be at least 0, not -2",
                "applications[1].deployments[0].ray_actor_options.resources.CPU: use ray_actor_options.num_cpus instead",
                #"applications[1].deployments[0].ray_actor_options.runtime_env.env_vars.OMP_NUM_THREADS: must be a string, not a number (4); quote it: "4""#,
            ]
        )
    }

    @Test("the error's description has one line per problem")
    func errorDescription() {
        do {
            _ = try parse("applications: [{name: a, deployments: [{name: A}]}, {deployments: []}]")
            Issue.record("expected an error")
        } catch {
            #expect(
                error.description == """
                    applications[0].deployments[0]: needs a handler (a Swift deployment, e.g. "echo") or a command (a program run per replica)
                    applications[1].name: required field is missing
                    applications[1].deployments: must list at least one deployment (the first takes the application's traffic)
                    applications[1].route_prefix: "/" is already the route prefix of application "a", applications[0]; each application needs its own
                    """
            )
            #expect(error.problems[1] == ConfigProblem(path: "applications[1].name", message: "required field is missing"))
        }
    }

    @Test("unknown handlers are refused, with a suggestion")
    func unknownHandler() {
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: ehco}]}]") == [
                #"applications[0].deployments[0].handler: unknown handler "ehco" (did you mean echo? known: cpu, echo, env, sleep)"#
            ]
        )
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: torch}]}]") == [
                #"applications[0].deployments[0].handler: unknown handler "torch" (known: cpu, echo, env, sleep)"#
            ]
        )
        #expect(throws: ConfigError.self) {
            try ConfigParser.parse("applications: [{name: a, deployments: [{name: A, handler: echo}]}]", knownHandlers: [])
        }
    }

    @Test("duplicate application names, route prefixes and deployment names")
    func duplicates() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments: [{name: A, handler: echo}, {name: A, handler: env}]
                  - name: a
                    route_prefix: /b
                    deployments: [{name: A, handler: echo}]
                  - name: c
                    route_prefix: /b
                    deployments: [{name: C, handler: echo}]
                  - name: d
                    deployments: [{name: D, handler: echo}]
                """
            ) == [
                #"applications[0].deployments[1].name: duplicate deployment name "A" in this application (also applications[0].deployments[0])"#,
                #"applications[1].name: duplicate application name "a" (also applications[0])"#,
                #"applications[2].route_prefix: "/b" is already the route prefix of application "a", applications[1]; each application needs its own"#,
                #"applications[3].route_prefix: "/" is already the route prefix of application "a", applications[0]; each application needs its own"#,
            ]
        )
    }

    @Test("handler and command: exactly one")
    func handlerOrCommand() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments:
                      - {name: Both, handler: echo, command: [x]}
                      - {name: Empty, command: []}
                      - {name: Mixed, command: [python3, 3]}
                      - {name: Str, command: "python3 app.py"}
                      - {name: Health, handler: echo, health_path: /h}
                """
            ) == [
                "applications[0].deployments[0].command: give either handler or command, not both",
                "applications[0].deployments[1].command: must not be empty: it names the program to run",
                "applications[0].deployments[2].command[1]: must be a string, not a number (3)",
                #"applications[0].deployments[3].command: must be a list of strings (the program and its arguments), not a string ("python3 app.py")"#,
                "applications[0].deployments[4].health_path: only applies to command deployments",
            ]
        )
    }

    @Test("num_replicas: a count of at least 0 or auto, never beside autoscaling_config")
    func numReplicasRules() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments:
                      - {name: A, handler: echo, num_replicas: -1}
                      - {name: B, handler: echo, num_replicas: 1.5}
                      - {name: C, handler: echo, num_replicas: many}
                      - {name: D, handler: echo, num_replicas: 2, autoscaling_config: {max_replicas: 3}}
                      - {name: E, handler: echo, num_replicas: 0}
                """
            ) == [
                "applications[0].deployments[0].num_replicas: must be at least 0, not -1",
                "applications[0].deployments[1].num_replicas: must be a whole number, not 1.5",
                #"applications[0].deployments[2].num_replicas: must be a whole number of at least 0, or "auto", not a string ("many")"#,
                #"applications[0].deployments[3].num_replicas: cannot be set together with autoscaling_config (only "auto" can); remove one of them"#,
            ]
        )
    }

    @Test("autoscaling bounds")
    func autoscalingBounds() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments:
                      - {name: A, handler: echo, autoscaling_config: {min_replicas: 2}}
                      - {name: B, handler: echo, autoscaling_config: {min_replicas: 1, max_replicas: 4, initial_replicas: 5}}
                      - {name: C, handler: echo, autoscaling_config: {min_replicas: -1, max_replicas: 0}}
                      - name: D
                        handler: echo
                        autoscaling_config:
                          target_ongoing_requests: 0
                          upscale_delay_s: -1
                          downscale_delay_s: -1
                          downscale_to_zero_delay_s: -1
                          upscaling_factor: 0
                          downscaling_factor: -1
                          metrics_interval_s: 0
                          look_back_period_s: 0
                      - {name: E, handler: echo, autoscaling_config: {min_replicas: 0, max_replicas: 1, initial_replicas: 0}}
                """
            ) == [
                "applications[0].deployments[0].autoscaling_config.max_replicas: must be at least min_replicas (2); it defaults to 1, so set it",
                "applications[0].deployments[1].autoscaling_config.initial_replicas: must be between min_replicas (1) and max_replicas (4), not 5",
                "applications[0].deployments[2].autoscaling_config.min_replicas: must be at least 0, not -1",
                "applications[0].deployments[2].autoscaling_config.max_replicas: must be at least 1, not 0",
                "applications[0].deployments[3].autoscaling_config.target_ongoing_requests: must be greater than 0, not 0",
                "applications[0].deployments[3].autoscaling_config.upscale_delay_s: must be at least 0, not -1",
                "applications[0].deployments[3].autoscaling_config.downscale_delay_s: must be at least 0, not -1",
                "applications[0].deployments[3].autoscaling_config.downscale_to_zero_delay_s: must be at least 0, not -1",
                "applications[0].deployments[3].autoscaling_config.upscaling_factor: must be greater than 0, not 0",
                "applications[0].deployments[3].autoscaling_config.downscaling_factor: must be greater than 0, not -1",
                "applications[0].deployments[3].autoscaling_config.metrics_interval_s: must be greater than 0, not 0",
                "applications[0].deployments[3].autoscaling_config.look_back_period_s: must be greater than 0, not 0",
            ]
        )
    }

    @Test("wrong shapes and unknown keys at every level")
    func shapesAndUnknownKeys() {
        #expect(
            problems(
                """
                logging: {}
                grpc_options: {}
                http_options: {hots: x}
                applications:
                  - name: a
                    import_path: app:graph
                    deployments:
                      - name: A
                        handler: echo
                        ray_actor_options: {num_cpu: 1, runtime_env: {pip: [torch]}}
                        autoscaling_config: [1]
                      - just a string
                """
            ) == [
                "logging: unknown field (expected one of: proxy_location, http_options, applications)",
                "grpc_options: unknown field (not supported: the ingress speaks HTTP/1.1 and h2c; see http_options)",
                "http_options.hots: unknown field (did you mean host?)",
                "applications[0].import_path: unknown field (not supported: each deployment names a `handler` (a Swift deployment) or a `command`)",
                "applications[0].deployments[0].autoscaling_config: must be a mapping, not a list",
                "applications[0].deployments[0].ray_actor_options.num_cpu: unknown field (did you mean num_cpus?)",
                "applications[0].deployments[0].ray_actor_options.runtime_env.pip: unknown field (not supported: install packages into the image or environment the command runs in)",
                "applications[0].deployments[1]: must be a mapping, not a string",
            ]
        )
    }

    @Test("whole-document problems", arguments: [
        ("", "the config is empty; it needs an `applications` list"),
        ("# just a comment\n", "the config is empty; it needs an `applications` list"),
        ("- a\n- b\n", "the config must be a mapping with `applications` (and optionally `http_options`), not a list"),
        ("http_options: {}", "applications: required field is missing (a list of applications; `[]` deploys nothing)"),
        ("applications: {}", "applications: must be a list of applications, not a mapping"),
        (#"{"applications": [}"#, "not valid JSON at line 1, column 19: unexpected character '}', expected a value"),
    ])
    func documentProblems(text: String, expected: String) {
        #expect(problems(text) == [expected])
    }

    @Test("YAML syntax errors say where")
    func yamlSyntax() {
        let found = problems("applications:\n  - name: a\n   deployments: [\n")
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("not valid YAML at line ") == true)
        let duplicate = problems("applications: []\napplications: []\n")
        #expect(duplicate.count == 1)
        #expect(duplicate.first?.contains("duplicate key `applications`") == true)
    }

    @Test("duplicate keys in JSON are reported with their path")
    func jsonDuplicateKeys() {
        #expect(
            problems(#"{"applications": [], "applications": []}"#) == [
                "applications: given more than once; each key may appear once per mapping"
            ]
        )
    }

    @Test("route prefixes and names must be plain")
    func prefixesAndNames() {
        #expect(
            problems(
                """
                applications:
                  - {name: a, route_prefix: /a/, deployments: [{name: "A#1", handler: echo}]}
                  - {name: b/c, route_prefix: "/with space", deployments: [{name: "", handler: echo}]}
                  - {name: 3, route_prefix: /d, deployments: [{name: D, handler: echo}]}
                """
            ) == [
                #"applications[0].route_prefix: must not end with "/" (write "/a"; it also matches "/a/…")"#,
                ##"applications[0].deployments[0].name: must not contain "#" or "/" (they separate replica ids and application names)"##,
                #"applications[1].name: must not contain "/" (it separates application and deployment)"#,
                ##"applications[1].route_prefix: must be a plain URL path (no spaces, "?" or "#")"##,
                "applications[1].deployments[0].name: must not be empty",
                "applications[2].name: must be a string, not a number (3)",
            ]
        )
    }

    @Test("null means unset")
    func nullMeansUnset() throws {
        let config = try parse(
            """
            applications:
              - name: a
                route_prefix:
                deployments:
                  - name: A
                    handler: echo
                    num_replicas: ~
                    ray_actor_options: {num_cpus: null}
            """
        )
        #expect(config.applications[0].routePrefix == "/")
        #expect(config.applications[0].ingress.numReplicas == .fixed(1))
        #expect(config.applications[0].ingress.actorOptions.numCPUs == nil)
    }

    @Test("non-finite numbers are refused")
    func nonFinite() {
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: echo, health_check_period_s: .inf}]}]")
                == ["applications[0].deployments[0].health_check_period_s: must be a finite number"]
        )
    }

    @Test("a route prefix under /-/ is refused: the proxy's own endpoints live there")
    func reservedPrefix() {
        #expect(
            problems(
                """
                applications:
                  - {name: a, route_prefix: /-/healthz, deployments: [{name: A, handler: echo}]}
                  - {name: b, route_prefix: /-, deployments: [{name: B, handler: echo}]}
                  - {name: c, route_prefix: /-dash, deployments: [{name: C, handler: echo}]}
                """
            ) == [
                #"applications[0].route_prefix: "/-/healthz" is under "/-/", which is reserved for the proxy's own endpoints (/-/healthz, /-/routes)"#,
                #"applications[1].route_prefix: "/-" is under "/-/", which is reserved for the proxy's own endpoints (/-/healthz, /-/routes)"#,
            ]
        )
    }

    @Test("resources finer than the 1/10,000 step, or past what a node may offer, are refused")
    func resourceSteps() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments:
                      - {name: A, handler: echo, ray_actor_options: {num_cpus: 0.00001}}
                      - {name: B, handler: echo, ray_actor_options: {num_cpus: 1e300}}
                      - {name: C, handler: echo, ray_actor_options: {num_gpus: 0.00015, memory: 1e14, resources: {tpu: 0.12345}}}
                      - {name: D, handler: echo, ray_actor_options: {num_cpus: 0.0001, num_gpus: 0.1, memory: 1e13, resources: {tpu: 0.3}}}
                """
            ) == [
                "applications[0].deployments[0].ray_actor_options.num_cpus: must be a multiple of 0.0001 (resources are counted in steps of 1/10,000), not 1e-05",
                "applications[0].deployments[1].ray_actor_options.num_cpus: must be at most 10000000000000 (the most one node may offer), not 1e+300",
                "applications[0].deployments[2].ray_actor_options.num_gpus: must be a multiple of 0.0001 (resources are counted in steps of 1/10,000), not 0.00015",
                "applications[0].deployments[2].ray_actor_options.memory: must be at most 10000000000000 (the most one node may offer), not 100000000000000",
                "applications[0].deployments[2].ray_actor_options.resources.tpu: must be a multiple of 0.0001 (resources are counted in steps of 1/10,000), not 0.12345",
            ]
        )
        #expect(ConfigLimits.isWholeSteps(0.1) && ConfigLimits.isWholeSteps(0.3) && ConfigLimits.isWholeSteps(2.0001))
        #expect(!ConfigLimits.isWholeSteps(0.00001) && !ConfigLimits.isWholeSteps(1.00005))
    }

    @Test("replica counts are bounded per deployment and per config, so one PUT cannot take the head down")
    func replicaLimits() {
        #expect(
            problems(
                """
                applications:
                  - name: a
                    deployments:
                      - {name: A, handler: echo, num_replicas: 1000000000}
                      - {name: B, handler: echo, autoscaling_config: {min_replicas: 1, max_replicas: 20000}}
                      - {name: C, handler: echo, autoscaling_config: {min_replicas: 10001, initial_replicas: 10001, max_replicas: 10001}}
                      - {name: D, handler: echo, num_replicas: 10000}
                """
            ) == [
                "applications[0].deployments[0].num_replicas: must be at most 10000 (the most replicas one deployment may ask for), not 1000000000",
                "applications[0].deployments[1].autoscaling_config.max_replicas: must be at most 10000 (the most replicas one deployment may ask for), not 20000",
                "applications[0].deployments[2].autoscaling_config.min_replicas: must be at most 10000 (the most replicas one deployment may ask for), not 10001",
                "applications[0].deployments[2].autoscaling_config.initial_replicas: must be at most 10000 (the most replicas one deployment may ask for), not 10001",
                "applications[0].deployments[2].autoscaling_config.max_replicas: must be at most 10000 (the most replicas one deployment may ask for), not 10001",
            ]
        )
        // Eleven deployments of 10,000 each: every one within its own limit, too many together.
        let many = (0..<11).map { "      - {name: D\($0), handler: echo, num_replicas: 10000}" }.joined(separator: "\n")
        #expect(
            problems("applications:\n  - name: a\n    deployments:\n" + many)
                == ["applications: ask for 110000 replicas in all (num_replicas, or initial_replicas and min_replicas when autoscaled); a config may ask for at most 100000"]
        )
        let apps = (0...ConfigLimits.maxApplications).map { "  - {name: a\($0), route_prefix: /a\($0), deployments: [{name: A, handler: echo, num_replicas: 0}]}" }
        #expect(
            problems("applications:\n" + apps.joined(separator: "\n"))
                == ["applications: lists 10001 applications; a config may hold at most 10000"]
        )
    }
}

@Suite("proxy_location")
struct ProxyLocationConfigTests {
    @Test("EveryNode by default; HeadOnly and Disabled as Ray spells them; anything else refused with a hint")
    func values() throws {
        #expect(try parse("applications: []").proxyLocation == .everyNode)
        #expect(try parse("proxy_location: HeadOnly\napplications: []").proxyLocation == .headOnly)
        #expect(try parse("proxy_location: Disabled\napplications: []").proxyLocation == .disabled)
        #expect(problems("proxy_location: HeadOnl\napplications: []") == [
            "proxy_location: must be EveryNode, HeadOnly or Disabled, not \"HeadOnl\" (did you mean HeadOnly?)"
        ])
        // Written back out (the state dir) and read again, it is the same.
        let config = try parse("proxy_location: Disabled\napplications: []")
        #expect(try parse(config.jsonValue.jsonString()) == config)
    }
}

@Suite("ingress")
struct IngressConfigTests {
    @Test("the first deployment by default; ingress names another; one that names nothing is refused with the field")
    func ingressField() throws {
        func text(_ line: String) -> String {
            """
            applications:
              - name: app
                \(line)
                deployments:
                  - {name: Ingress, handler: echo}
                  - {name: Model, handler: echo}
            """
        }
        #expect(try parse(text("")).applications[0].ingress.name == "Ingress")
        #expect(try parse(text("ingress: Model")).applications[0].ingress.name == "Model")
        #expect(problems(text("ingress: Modle")) == [
            #"applications[0].ingress: names no deployment of this application (it has "Ingress", "Model")"#
        ])
        #expect(problems(text("ingress: 3")) == ["applications[0].ingress: must be a string, not a number (3)"])
    }
}
