/// The node autoscaler's config (`serve-head --cluster-config cluster.yaml`, DESIGN.md
/// "Autoscaling"): which provider starts and stops worker machines, the node types it may start,
/// and the limits it keeps to. Parse and validate with `ClusterConfigParser.parse`; the
/// memberwise initializers exist for tests.
///
/// Defaults follow Ray's cluster YAML where the issue names none (PEERS.md §6):
/// `idle_timeout_s` 300 (Ray's `idle_timeout_minutes: 5`), `upscaling_speed` 1.0,
/// `max_concurrent_launches` 10.
public struct ClusterConfig: Sendable, Hashable {
    public var provider: NodeProviderConfig
    /// In the order the file lists them (ties in "which type fits best" go to the earlier one).
    public var nodeTypes: [NodeTypeConfig]
    /// Worker nodes of every type together, the head not counted (Ray's `max_workers`). Nil: the
    /// types' own maxima are the only limit.
    public var maxWorkers: Int?
    /// How long a launched node may host nothing before it is given back.
    public var idleTimeoutS: Double
    /// Launches in flight may be at most `upscaling_speed` × the nodes in the cluster, but never
    /// fewer than 5 (Ray's rule, "the cluster can grow by at most 100% at a time").
    public var upscalingSpeed: Double
    /// A cap on launches in flight whatever `upscaling_speed` allows.
    public var maxConcurrentLaunches: Int
    /// How long a launched node has to register with the head before it is terminated and the
    /// launch retried (a cloud VM's boot, an image pull).
    public var launchTimeoutS: Double

    public static let defaultIdleTimeoutS = 300.0
    public static let defaultUpscalingSpeed = 1.0
    public static let defaultMaxConcurrentLaunches = 10
    public static let defaultLaunchTimeoutS = 300.0

    public init(
        provider: NodeProviderConfig = .local(LocalProviderConfig()),
        nodeTypes: [NodeTypeConfig],
        maxWorkers: Int? = nil,
        idleTimeoutS: Double = ClusterConfig.defaultIdleTimeoutS,
        upscalingSpeed: Double = ClusterConfig.defaultUpscalingSpeed,
        maxConcurrentLaunches: Int = ClusterConfig.defaultMaxConcurrentLaunches,
        launchTimeoutS: Double = ClusterConfig.defaultLaunchTimeoutS
    ) {
        self.provider = provider
        self.nodeTypes = nodeTypes
        self.maxWorkers = maxWorkers
        self.idleTimeoutS = idleTimeoutS
        self.upscalingSpeed = upscalingSpeed
        self.maxConcurrentLaunches = maxConcurrentLaunches
        self.launchTimeoutS = launchTimeoutS
    }

    public func nodeType(named name: String) -> NodeTypeConfig? {
        self.nodeTypes.first { $0.name == name }
    }
}

/// One kind of worker machine the autoscaler may start.
public struct NodeTypeConfig: Sendable, Hashable {
    public var name: String
    /// What one node of this type offers (`CPU`, `GPU`, `memory`, custom names and at most one
    /// `accelerator_type:NAME`): what the planner packs demands onto, and the flags a launched
    /// worker gets.
    public var resources: ResourceSet
    public var minWorkers: Int
    public var maxWorkers: Int
    public var labels: [String: String]

    public init(
        name: String,
        resources: ResourceSet,
        minWorkers: Int = 0,
        maxWorkers: Int,
        labels: [String: String] = [:]
    ) {
        self.name = name
        self.resources = resources
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
        self.labels = labels
    }

    /// The accelerator type its nodes offer (`accelerator_type:A100` → "A100").
    public var acceleratorType: String? {
        self.resources.quantities.keys.first { $0.hasPrefix(Self.acceleratorPrefix) }
            .map { String($0.dropFirst(Self.acceleratorPrefix.count)) }
    }

    static let acceleratorPrefix = "accelerator_type:"

    /// The `serve-worker` flags that make a worker offer exactly these resources and carry this
    /// type (the node id and the head's address are the launcher's to add). `--num-gpus 0` is
    /// explicit so that a worker on a GPU machine does not offer GPUs the type does not have;
    /// `memory` is passed only when the type names it.
    public var workerFlags: [String] {
        var flags = ["--node-type", self.name]
        flags += ["--num-cpus", self.resources[ResourceSet.cpu].description]
        flags += ["--num-gpus", self.resources[ResourceSet.gpu].description]
        if self.resources[ResourceSet.memory] > .zero {
            flags += ["--memory", self.resources[ResourceSet.memory].description]
        }
        if let accelerator = self.acceleratorType {
            flags += ["--accelerator-type", accelerator]
        }
        let custom = self.resources.quantities.filter { name, _ in
            name != ResourceSet.cpu && name != ResourceSet.gpu && name != ResourceSet.memory
                && !name.hasPrefix(Self.acceleratorPrefix)
        }
        if !custom.isEmpty {
            flags += ["--resources", JSONValue.object(custom.mapValues { .number($0.doubleValue) }).jsonString()]
        }
        if !self.labels.isEmpty {
            flags += ["--labels", self.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")]
        }
        return flags
    }
}

/// Which node provider the head drives, and its settings.
public enum NodeProviderConfig: Sendable, Hashable {
    /// `serve-worker` processes on this machine.
    case local(LocalProviderConfig)
    /// User commands that launch, terminate and list nodes.
    case command(CommandProviderConfig)
    /// Worker pods created, listed and deleted through the Kubernetes API server.
    case kubernetes(KubernetesProviderConfig)

    public var kind: String {
        switch self {
        case .local: "local"
        case .command: "command"
        case .kubernetes: "kubernetes"
        }
    }
}

/// `provider: {type: local}`.
public struct LocalProviderConfig: Sendable, Hashable {
    /// The worker binary to start; nil: `serve-worker` next to the running head's executable.
    public var workerPath: String?

    public init(workerPath: String? = nil) {
        self.workerPath = workerPath
    }
}

/// `provider: {type: command, launch: …, terminate: …, list: …}`: each command is an argv list,
/// or a string run by `/bin/sh -c` (the arguments follow as `$1`, `$2`, …).
public struct CommandProviderConfig: Sendable, Hashable {
    public var launch: [String]
    public var terminate: [String]
    public var list: [String]
    /// The cluster address the launched workers dial (`SERVE_ADDRESS`); nil: the head's cluster
    /// host and port (127.0.0.1 when it listens on every interface).
    public var headAddress: String?
    /// How long one command may run before it is killed and counted as failed.
    public var timeoutS: Double

    public static let defaultTimeoutS = 60.0

    public init(
        launch: [String],
        terminate: [String],
        list: [String],
        headAddress: String? = nil,
        timeoutS: Double = CommandProviderConfig.defaultTimeoutS
    ) {
        self.launch = launch
        self.terminate = terminate
        self.list = list
        self.headAddress = headAddress
        self.timeoutS = timeoutS
    }
}

/// `provider: {type: kubernetes, head_address: …, pod_template: …}`: one pod per node, made from
/// `pod_template` (a Pod's `metadata` and `spec`), through the API server's REST API
/// (`KubernetesPods` builds and reads the pods; the driver is `ServeEmbedded`'s
/// `KubernetesNodeProvider`).
public struct KubernetesProviderConfig: Sendable, Hashable {
    /// Where the pods go; nil: the namespace of the head's service account (in a pod), else the
    /// kubeconfig context's, else "default".
    public var namespace: String?
    /// The value of the `swift-serve.io/cluster` label on this head's pods: `list` finds exactly
    /// the pods that carry it, so several heads can share a namespace.
    public var clusterName: String
    /// What the worker pods dial (`serve-head.NAMESPACE.svc:6380`): required, since the head's
    /// own listening address means nothing to another pod.
    public var headAddress: String
    /// A kubeconfig file to reach the API server with; nil: the in-cluster service account
    /// (`/var/run/secrets/kubernetes.io/serviceaccount`).
    public var kubeconfig: String?
    /// The kubeconfig context to use; nil: its `current-context`.
    public var context: String?
    /// The API server's URL, overriding the kubeconfig's or the in-cluster one (e.g.
    /// `http://127.0.0.1:8001` behind `kubectl proxy`).
    public var apiServer: String?
    /// The Secret (key `token`) that a pod's `SERVE_TOKEN` comes from when the template's
    /// container sets none; the token itself is never written into a pod spec.
    public var tokenSecret: String
    /// The Pod every node is made from: `{metadata: {labels, annotations}, spec: {containers:
    /// [{name: serve-worker, image: …}], …}}`.
    public var podTemplate: JSONValue
    /// How long one API call may take.
    public var timeoutS: Double

    public static let defaultClusterName = "default"
    public static let defaultTokenSecret = "serve-token"
    public static let defaultTimeoutS = 30.0

    public init(
        namespace: String? = nil,
        clusterName: String = KubernetesProviderConfig.defaultClusterName,
        headAddress: String,
        kubeconfig: String? = nil,
        context: String? = nil,
        apiServer: String? = nil,
        tokenSecret: String = KubernetesProviderConfig.defaultTokenSecret,
        podTemplate: JSONValue,
        timeoutS: Double = KubernetesProviderConfig.defaultTimeoutS
    ) {
        self.namespace = namespace
        self.clusterName = clusterName
        self.headAddress = headAddress
        self.kubeconfig = kubeconfig
        self.context = context
        self.apiServer = apiServer
        self.tokenSecret = tokenSecret
        self.podTemplate = podTemplate
        self.timeoutS = timeoutS
    }
}
