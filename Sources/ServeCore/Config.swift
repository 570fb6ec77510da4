/// The config file of DESIGN.md "Configuration", Ray Serve's shape: `http_options` and a list of
/// `applications`, each a list of `deployments`. Parse and validate with `ConfigParser.parse`;
/// the memberwise initializers exist for tests and for code that builds configs itself.
public struct ServeConfig: Sendable, Hashable {
    public var proxyLocation: ProxyLocation
    public var httpOptions: HTTPOptions
    public var applications: [ApplicationConfig]

    public init(proxyLocation: ProxyLocation = .everyNode, httpOptions: HTTPOptions = HTTPOptions(), applications: [ApplicationConfig] = []) {
        self.proxyLocation = proxyLocation
        self.httpOptions = httpOptions
        self.applications = applications
    }

    /// The application with this name, if deployed.
    public func application(named name: String) -> ApplicationConfig? {
        self.applications.first { $0.name == name }
    }
}

/// `proxy_location`: which nodes run an HTTP proxy (Ray Serve's names and default).
public enum ProxyLocation: String, Sendable, Hashable, CaseIterable {
    /// The head and every worker.
    case everyNode = "EveryNode"
    /// The head only.
    case headOnly = "HeadOnly"
    /// None: deployments are reached through handles only.
    case disabled = "Disabled"
}

/// `http_options`: where the ingress listens and what it tolerates.
public struct HTTPOptions: Sendable, Hashable {
    /// The ingress's bind address; Ray's default listens on every interface.
    public var host: String
    /// The ingress port (DESIGN.md: 8000, Ray's default).
    public var port: Int
    /// End-to-end limit on one request, after which the ingress answers 504. Nil means no limit,
    /// as in Ray, where `request_timeout_s` defaults to None (PEERS.md §2 "Timeouts").
    public var requestTimeoutS: Double?
    /// Largest request body accepted before answering 413 (DESIGN.md: 100 MiB).
    public var maxBodyBytes: Int

    public static let defaultMaxBodyBytes = 100 * 1024 * 1024

    public init(
        host: String = "0.0.0.0",
        port: Int = 8000,
        requestTimeoutS: Double? = nil,
        maxBodyBytes: Int = HTTPOptions.defaultMaxBodyBytes
    ) {
        self.host = host
        self.port = port
        self.requestTimeoutS = requestTimeoutS
        self.maxBodyBytes = maxBodyBytes
    }
}

/// One application: a route prefix and the deployments behind it.
public struct ApplicationConfig: Sendable, Hashable {
    public var name: String
    /// Where its HTTP traffic comes in; Ray's default is "/", and no two applications may share
    /// one (the ingress matches the longest prefix, so a shared one would be ambiguous).
    public var routePrefix: String
    /// At least one; `ingress` names the one that takes the application's HTTP traffic.
    public var deployments: [DeploymentConfig]
    /// `ingress: DEPLOYMENT`: the deployment that takes the application's HTTP traffic (nil: the
    /// first one listed). The others are reached through handles.
    public var ingressName: String?
    /// `idempotent: true` (default false): every request to this route may be sent once more to
    /// another replica when its replica fails before answering, whatever its method (a model's
    /// `POST /predict` usually is). GET and HEAD are retried without it. Bodies up to
    /// `ApplicationConfig.maxRetryBodyBytes` are buffered for the retry; larger ones are not
    /// retried. Not part of Ray's schema.
    public var idempotent: Bool

    /// The largest request body an idempotent route keeps to send again (1 MiB).
    public static let maxRetryBodyBytes = 1 << 20

    public init(
        name: String, routePrefix: String = "/", deployments: [DeploymentConfig], idempotent: Bool = false, ingressName: String? = nil
    ) {
        self.name = name
        self.routePrefix = routePrefix
        self.deployments = deployments
        self.idempotent = idempotent
        self.ingressName = ingressName
    }

    /// The deployment that takes the application's HTTP traffic: the one `ingress` names, else
    /// the first one listed, as in a Ray config where the ingress deployment is the
    /// application's entry point. A parsed config always has one; a hand-built one with no
    /// deployments traps here.
    public var ingress: DeploymentConfig {
        self.ingressName.flatMap(self.deployment(named:)) ?? self.deployments[0]
    }

    public func deployment(named name: String) -> DeploymentConfig? {
        self.deployments.first { $0.name == name }
    }
}

/// `num_replicas`: a fixed count, or `"auto"`, which Ray turns into autoscaling with
/// `AutoscalingConfig.auto`.
public enum NumReplicas: Sendable, Hashable {
    case fixed(Int)
    case auto
}

/// One deployment: what a replica runs, how many replicas, and what each reserves.
public struct DeploymentConfig: Sendable, Hashable {
    public var name: String
    /// A built-in or linked Swift deployment ("echo", "sleep", "cpu", "env", …). Exactly one of
    /// `handler` and `command` is set.
    public var handler: String?
    /// A program run once per replica, serving HTTP/1.1 on 127.0.0.1:$PORT.
    public var command: [String]?
    /// For command deployments: the replica is ready when this path answers 2xx, else when its
    /// port accepts connections.
    public var healthPath: String?
    /// `.fixed(n)` for a hand-scaled deployment, `.auto` for `num_replicas: auto`, nil when
    /// `autoscaling_config` alone was given.
    public var numReplicas: NumReplicas?
    /// Set when `autoscaling_config` is given or `num_replicas` is "auto"; when set it decides
    /// the replica count.
    public var autoscaling: AutoscalingConfig?
    /// Requests one replica runs at once before the router sends elsewhere (Ray's default 5,
    /// PEERS.md §2 "Back-pressure").
    public var maxOngoingRequests: Int
    /// Requests that may wait at the router for this deployment before it answers 503; -1 is
    /// unbounded (Ray's default), 0 means no queue.
    public var maxQueuedRequests: Int
    /// Passed to the replica (Ray's `reconfigure`); changing it does not restart replicas.
    public var userConfig: JSONValue?
    public var actorOptions: ActorOptions
    /// After this long a stopping replica is killed (SIGKILL for a process), Ray's 20 s.
    public var gracefulShutdownTimeoutS: Double
    /// Ray's health-check period (10 s) and timeout (30 s).
    public var healthCheckPeriodS: Double
    public var healthCheckTimeoutS: Double
    /// `placement_strategy`: PACK (the default, fewest nodes) or SPREAD (fewest replicas of this
    /// deployment per node). Not part of `specVersion`: changing it moves no running replica,
    /// only where new ones go.
    public var placementStrategy: PlacementStrategy
    /// `max_replicas_per_node`: at most this many of this deployment's replicas on one node
    /// (Ray's option of the same name); nil is no limit. Not part of `specVersion`.
    public var maxReplicasPerNode: Int?

    public static let defaultMaxOngoingRequests = 5

    /// With neither `numReplicas` nor `autoscaling` given, the guide's default of one replica
    /// (`.fixed(1)`) is filled in, as the parser does.
    public init(
        name: String,
        handler: String? = nil,
        command: [String]? = nil,
        healthPath: String? = nil,
        numReplicas: NumReplicas? = nil,
        autoscaling: AutoscalingConfig? = nil,
        maxOngoingRequests: Int = DeploymentConfig.defaultMaxOngoingRequests,
        maxQueuedRequests: Int = -1,
        userConfig: JSONValue? = nil,
        actorOptions: ActorOptions = ActorOptions(),
        gracefulShutdownTimeoutS: Double = 20,
        healthCheckPeriodS: Double = 10,
        healthCheckTimeoutS: Double = 30,
        placementStrategy: PlacementStrategy = .pack,
        maxReplicasPerNode: Int? = nil
    ) {
        self.name = name
        self.handler = handler
        self.command = command
        self.healthPath = healthPath
        if numReplicas == .auto && autoscaling == nil {
            self.autoscaling = .auto
        } else {
            self.autoscaling = autoscaling
        }
        self.numReplicas = numReplicas ?? (autoscaling == nil ? .fixed(1) : nil)
        self.maxOngoingRequests = maxOngoingRequests
        self.maxQueuedRequests = maxQueuedRequests
        self.userConfig = userConfig
        self.actorOptions = actorOptions
        self.gracefulShutdownTimeoutS = gracefulShutdownTimeoutS
        self.healthCheckPeriodS = healthCheckPeriodS
        self.healthCheckTimeoutS = healthCheckTimeoutS
        self.placementStrategy = placementStrategy
        self.maxReplicasPerNode = maxReplicasPerNode
    }

    /// Whether the application autoscaler, not `num_replicas`, decides the replica count.
    public var isAutoscaling: Bool {
        self.autoscaling != nil
    }

    /// The replicas a fresh deployment starts with: `n` for `num_replicas: n`; for autoscaling,
    /// `initial_replicas`, which the guide says "is set to min_replicas by default".
    public var initialReplicaCount: Int {
        if let autoscaling {
            return autoscaling.initialReplicaCount
        }
        switch self.numReplicas {
        case .fixed(let count): return count
        case .auto: return AutoscalingConfig.auto.initialReplicaCount
        case nil: return 1
        }
    }

    /// What one replica reserves on its node (DESIGN.md "Scheduling and resources"): `CPU` =
    /// `num_cpus`, or 1 when unset ("By default, each replica reserves one CPU", the guide's
    /// "Resource Management"); `GPU`, `memory` and custom resources as given; and
    /// `accelerator_type:NAME` 1 when `accelerator_type` is set, which only a node of that type
    /// offers.
    public var resourceDemand: ResourceSet {
        let options = self.actorOptions
        var demand = ResourceSet()
        for (name, amount) in options.resources {
            demand[name] = demand[name] + ResourceQuantity(amount)
        }
        demand[ResourceSet.cpu] = ResourceQuantity(options.numCPUs ?? 1)
        demand[ResourceSet.gpu] = ResourceQuantity(options.numGPUs)
        demand[ResourceSet.memory] = ResourceQuantity(options.memory)
        if let type = options.acceleratorType {
            demand[ResourceSet.acceleratorKey(type)] = ResourceQuantity(integer: 1)
        }
        return demand
    }

    /// `OMP_NUM_THREADS` for each replica (the guide's "Configuring Parallelism with
    /// OMP_NUM_THREADS"): the user's own `runtime_env.env_vars` value wins; otherwise
    /// `num_cpus` rounded down, and at least 1, since Ray "sets OMP_NUM_THREADS=1 if num_cpus is
    /// not specified ... to reduce contention" and a fractional CPU cannot run a thread less.
    public var ompNumThreads: String {
        if let explicit = self.actorOptions.runtimeEnv.envVars["OMP_NUM_THREADS"] {
            return explicit
        }
        guard let cpus = self.actorOptions.numCPUs else { return "1" }
        return String(max(1, ResourceQuantity(cpus).integerPart))
    }

    /// A hash of everything whose change requires replacing replicas rather than updating them
    /// in place: `handler`, `command`, `health_path`, the resource demand, `object_store_memory`,
    /// `runtime_env`, and the `OMP_NUM_THREADS` a replica gets. Lightweight fields
    /// (`num_replicas`, `user_config`, `max_ongoing_requests`, `max_queued_requests`, the
    /// autoscaling fields, shutdown and health-check timings, `placement_strategy`,
    /// `max_replicas_per_node`) are left out, as Ray applies those without restarting replicas
    /// (placement decides where new replicas go, not what a replica is).
    ///
    /// The resource demand is hashed rather than the raw options, so writing `num_cpus: 1`
    /// where it was unset (the same reservation, the same thread count) restarts nothing.
    /// FNV-1a (64-bit) over a canonical JSON string, as 16 hex digits: the same in every
    /// process, unlike `Hasher`, which is seeded per process.
    public var specVersion: String {
        let options = self.actorOptions
        var canonical: [String: JSONValue] = [
            "demand": .object(self.resourceDemand.quantitiesE4.mapValues { .number(Double($0)) }),
            "omp_num_threads": .string(self.ompNumThreads),
            "env_vars": .object(options.runtimeEnv.envVars.mapValues { .string($0) }),
        ]
        if let handler { canonical["handler"] = .string(handler) }
        if let command { canonical["command"] = .array(command.map { .string($0) }) }
        if let healthPath { canonical["health_path"] = .string(healthPath) }
        if let workingDir = options.runtimeEnv.workingDir { canonical["working_dir"] = .string(workingDir) }
        if let objectStore = options.objectStoreMemory { canonical["object_store_memory"] = .number(objectStore) }
        return FNV1a.hex(JSONValue.object(canonical).jsonString())
    }
}

/// `ray_actor_options` (also accepted as `actor_options`): what each replica reserves and the
/// environment it runs in (the guide's list of supported options).
public struct ActorOptions: Sendable, Hashable {
    /// CPUs reserved per replica; nil means the guide's default of one, with `OMP_NUM_THREADS=1`.
    public var numCPUs: Double?
    /// GPUs reserved per replica, fractional to share one GPU (the guide's "Fractional GPUs").
    public var numGPUs: Double
    /// Bytes of memory reserved per replica (logical, as in Ray).
    public var memory: Double
    /// Custom resources, e.g. `{"custom_resource": 2}`, to pin replicas to nodes that offer them.
    public var resources: [String: Double]
    /// Only nodes of this accelerator type (`--accelerator-type`) can host a replica.
    public var acceleratorType: String?
    /// Accepted because the guide lists it among `ray_actor_options`; there is no object store
    /// here, so it reserves nothing.
    public var objectStoreMemory: Double?
    public var runtimeEnv: RuntimeEnv

    public init(
        numCPUs: Double? = nil,
        numGPUs: Double = 0,
        memory: Double = 0,
        resources: [String: Double] = [:],
        acceleratorType: String? = nil,
        objectStoreMemory: Double? = nil,
        runtimeEnv: RuntimeEnv = RuntimeEnv()
    ) {
        self.numCPUs = numCPUs
        self.numGPUs = numGPUs
        self.memory = memory
        self.resources = resources
        self.acceleratorType = acceleratorType
        self.objectStoreMemory = objectStoreMemory
        self.runtimeEnv = runtimeEnv
    }
}

/// `runtime_env`: environment variables and working directory for each replica. (Ray's
/// package-installing fields, such as `pip`, have no meaning for Swift and process replicas.)
public struct RuntimeEnv: Sendable, Hashable {
    public var envVars: [String: String]
    public var workingDir: String?

    public init(envVars: [String: String] = [:], workingDir: String? = nil) {
        self.envVars = envVars
        self.workingDir = workingDir
    }
}

/// `autoscaling_config`: the guide's "autoscaling_config parameters", with the guide's defaults
/// where it names them and Ray Serve's current ones otherwise (PEERS.md §1 "Current defaults").
public struct AutoscalingConfig: Sendable, Hashable {
    /// Guide: default 1; may be 0, and then traffic starts the first replica (cold start).
    public var minReplicas: Int
    /// Guide: "initial_replicas is optional; it's set to min_replicas by default."
    public var initialReplicas: Int?
    /// Guide: default 1.
    public var maxReplicas: Int
    /// Ongoing requests (running plus queued) each replica should have; the guide's
    /// `target_num_ongoing_requests_per_replica`, default 1 (Ray later changed it to 2).
    public var targetOngoingRequests: Double
    /// Guide: 30 s of consistent upscale decisions before scaling up.
    public var upscaleDelayS: Double
    /// Guide: 600 s of consistent downscale decisions before scaling down.
    public var downscaleDelayS: Double
    /// The delay for the last step, 1 → 0, when set (Ray: unset, so `downscaleDelayS` applies).
    public var downscaleToZeroDelayS: Double?
    /// Guide: default 1.0, the gain applied to each step.
    public var smoothingFactor: Double
    /// Gain for upscaling steps; nil falls back to `smoothingFactor` (Ray's
    /// `upscale_smoothing_factor` is accepted as an alias).
    public var upscalingFactor: Double?
    /// Gain for downscaling steps; nil falls back to `smoothingFactor` (alias
    /// `downscale_smoothing_factor`).
    public var downscalingFactor: Double?
    /// Guide: default 10 s, how often replicas report their queue lengths.
    public var metricsIntervalS: Double
    /// Ray: 30 s, the window the queue lengths are averaged over.
    public var lookBackPeriodS: Double
    /// How the window is aggregated: "mean" (Ray's default), "max" or "min".
    public var aggregationFunction: String
    /// Knative-style panic mode (PEERS.md §7): the short window, in seconds, whose aggregate
    /// detects a burst. Panic mode is on only when this and `panicThreshold` are both set
    /// (nil, the default: off).
    public var panicWindowS: Double?
    /// Panic starts when the count the panic window wants is at least this times the running
    /// count (2.0 = 200 %, Knative's default); nil (the default) leaves panic mode off.
    public var panicThreshold: Double?

    public static let aggregationFunctions: Set<String> = ["mean", "max", "min"]

    public init(
        minReplicas: Int = 1,
        initialReplicas: Int? = nil,
        maxReplicas: Int = 1,
        targetOngoingRequests: Double = 1,
        upscaleDelayS: Double = 30,
        downscaleDelayS: Double = 600,
        downscaleToZeroDelayS: Double? = nil,
        smoothingFactor: Double = 1.0,
        upscalingFactor: Double? = nil,
        downscalingFactor: Double? = nil,
        metricsIntervalS: Double = 10,
        lookBackPeriodS: Double = 30,
        aggregationFunction: String = "mean",
        panicWindowS: Double? = nil,
        panicThreshold: Double? = nil
    ) {
        self.minReplicas = minReplicas
        self.initialReplicas = initialReplicas
        self.maxReplicas = maxReplicas
        self.targetOngoingRequests = targetOngoingRequests
        self.upscaleDelayS = upscaleDelayS
        self.downscaleDelayS = downscaleDelayS
        self.downscaleToZeroDelayS = downscaleToZeroDelayS
        self.smoothingFactor = smoothingFactor
        self.upscalingFactor = upscalingFactor
        self.downscalingFactor = downscalingFactor
        self.metricsIntervalS = metricsIntervalS
        self.lookBackPeriodS = lookBackPeriodS
        self.aggregationFunction = aggregationFunction
        self.panicWindowS = panicWindowS
        self.panicThreshold = panicThreshold
    }

    /// Whether panic mode is on: both panic fields set.
    public var panicEnabled: Bool {
        self.panicWindowS != nil && self.panicThreshold != nil
    }

    /// `num_replicas: auto`: Ray's `AutoscalingConfig.default()`, min 1, max 100, target 2
    /// (PEERS.md §1); fields given in `autoscaling_config` next to it override these.
    public static let auto = AutoscalingConfig(minReplicas: 1, maxReplicas: 100, targetOngoingRequests: 2)

    /// `initial_replicas`, or `min_replicas` when unset (the guide).
    public var initialReplicaCount: Int {
        self.initialReplicas ?? self.minReplicas
    }

    /// The gain for an upscaling step: `upscaling_factor`, else `smoothing_factor`.
    public var effectiveUpscalingFactor: Double {
        self.upscalingFactor ?? self.smoothingFactor
    }

    /// The gain for a downscaling step: `downscaling_factor`, else `smoothing_factor`.
    public var effectiveDownscalingFactor: Double {
        self.downscalingFactor ?? self.smoothingFactor
    }
}
