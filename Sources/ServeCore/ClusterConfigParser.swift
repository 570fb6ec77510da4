/// Reads and validates a cluster config (`--cluster-config`), YAML or JSON, with the same rules
/// and messages as the application config (`ConfigParser`): every problem at once, each with its
/// field path (`node_types.gpu.resources.GPU: must be at least 0, not -1`), and a bad file
/// refused whole before the head starts.
public enum ClusterConfigParser {
    public static func parse(_ text: String) throws(ConfigError) -> ClusterConfig {
        let root = try ConfigParser.document(text)
        var validator = ConfigValidator(knownHandlers: [])
        let config = validator.clusterConfig(root)
        guard validator.problems.isEmpty, let config else {
            throw ConfigError(problems: validator.problems)
        }
        return config
    }
}

extension ConfigValidator {
    static let clusterFields = [
        FieldSpec("provider"), FieldSpec("node_types", aliases: ["available_node_types"]), FieldSpec("max_workers"),
        FieldSpec("idle_timeout_s"), FieldSpec("upscaling_speed"), FieldSpec("max_concurrent_launches"),
        FieldSpec("launch_timeout_s"),
    ]
    static let nodeTypeFields = [
        FieldSpec("resources"), FieldSpec("min_workers"), FieldSpec("max_workers"), FieldSpec("labels"),
    ]
    static let localProviderFields = [FieldSpec("type"), FieldSpec("worker_path")]
    static let commandProviderFields = [
        FieldSpec("type"), FieldSpec("launch"), FieldSpec("terminate"), FieldSpec("list"), FieldSpec("head_address"),
        FieldSpec("timeout_s"),
    ]
    static let kubernetesProviderFields = [
        FieldSpec("type"), FieldSpec("namespace"), FieldSpec("cluster_name"), FieldSpec("head_address"),
        FieldSpec("kubeconfig"), FieldSpec("context"), FieldSpec("api_server"), FieldSpec("token_secret"),
        FieldSpec("pod_template"), FieldSpec("timeout_s"),
    ]
    static let providerTypes = ["local", "command", "kubernetes"]

    /// Nil when the document is not a mapping or a required part is missing (already reported).
    mutating func clusterConfig(_ root: ConfigNode) -> ClusterConfig? {
        guard case .mapping = root else {
            self.report("", "the cluster config must be a mapping with `provider` and `node_types`, not \(root.kindDescription)")
            return nil
        }
        guard let fields = self.fields(of: root, at: "", Self.clusterFields) else { return nil }

        var provider: NodeProviderConfig?
        if let node = fields["provider"] {
            provider = self.provider(node, at: fields.path("provider"))
        } else {
            self.report("provider", "required field is missing (e.g. {type: local})")
        }
        let maxWorkers = self.integer(fields, "max_workers", .atLeast(0))
        var config = ClusterConfig(nodeTypes: [])
        if let value = self.number(fields, "idle_timeout_s", .atLeast(0)).value { config.idleTimeoutS = value }
        if let value = self.number(fields, "upscaling_speed", .atLeast(0)).value { config.upscalingSpeed = value }
        if let value = self.integer(fields, "max_concurrent_launches", .atLeast(1)).value {
            config.maxConcurrentLaunches = value
        }
        if let value = self.number(fields, "launch_timeout_s", .greaterThan(0)).value { config.launchTimeoutS = value }
        config.maxWorkers = maxWorkers.value

        guard let typesNode = fields["node_types"] else {
            self.report("node_types", "required field is missing (a mapping of type names to {resources, max_workers})")
            return nil
        }
        let typesPath = fields.path("node_types")
        guard case .mapping(let entries) = typesNode else {
            self.report(typesPath, Self.typeMessage("a mapping of node type names to node types", typesNode))
            return nil
        }
        if entries.isEmpty {
            self.report(typesPath, "must name at least one node type")
        }
        var seen: Set<String> = []
        for entry in entries {
            let path = Self.join(typesPath, entry.key)
            if entry.key.isEmpty || entry.key == "head" || entry.key.contains(where: { $0.isWhitespace || $0 == "," }) {
                self.report(path, "a node type needs a plain name (not empty, not \"head\", no spaces or commas)")
                continue
            }
            guard seen.insert(entry.key).inserted else {
                self.report(path, "given more than once; each key may appear once per mapping")
                continue
            }
            if let type = self.nodeType(entry.key, entry.value, at: path, globalMax: maxWorkers.value) {
                config.nodeTypes.append(type)
            }
        }
        if let global = maxWorkers.value {
            let minimum = config.nodeTypes.reduce(0) { $0 + $1.minWorkers }
            if minimum > global {
                self.report(fields.path("max_workers"), "must be at least the node types' min_workers together (\(minimum)), not \(global)")
            }
        }
        guard let provider else { return nil }
        config.provider = provider
        return config
    }

    mutating func nodeType(_ name: String, _ node: ConfigNode, at path: String, globalMax: Int?) -> NodeTypeConfig? {
        guard let fields = self.fields(of: node, at: path, Self.nodeTypeFields) else { return nil }
        var resources = ResourceSet()
        if let resourcesNode = fields["resources"] {
            resources = self.nodeResources(resourcesNode, at: fields.path("resources"))
        } else {
            self.report(fields.path("resources"), "required field is missing (e.g. {CPU: 2})")
        }
        let minWorkers = self.integer(fields, "min_workers", .atLeast(0))
        var maxWorkers = self.integer(fields, "max_workers", .atLeast(0))
        if case .absent = maxWorkers {
            // Ray: a type's max_workers defaults to the cluster's.
            if let globalMax {
                maxWorkers = .value(globalMax)
            } else {
                self.report(fields.path("max_workers"), "required field is missing (here or as the top-level max_workers)")
            }
        }
        var labels: [String: String] = [:]
        if let labelsNode = fields["labels"] {
            labels = self.labels(labelsNode, at: fields.path("labels"))
        }
        guard let low = minWorkers.or(0), let high = maxWorkers.value else { return nil }
        if low > high {
            self.report(fields.path("min_workers"), "must be at most max_workers (\(high)), not \(low)")
            return nil
        }
        return NodeTypeConfig(name: name, resources: resources, minWorkers: low, maxWorkers: high, labels: labels)
    }

    /// `{CPU: 2, GPU: 1, memory: 8e9, "accelerator_type:A100": 1, custom: 4}`: non-negative
    /// amounts, GPUs whole (a machine has whole devices), at most one accelerator type.
    mutating func nodeResources(_ node: ConfigNode, at path: String) -> ResourceSet {
        guard case .mapping(let entries) = node else {
            self.report(path, Self.typeMessage("a mapping of resource names to amounts", node))
            return ResourceSet()
        }
        var resources = ResourceSet()
        var names: Set<String> = []
        var accelerator: String?
        for entry in entries {
            let entryPath = Self.join(path, entry.key)
            if entry.key.isEmpty {
                self.report(entryPath, "a resource needs a name")
                continue
            }
            if !names.insert(entry.key).inserted {
                self.report(entryPath, "given more than once; each key may appear once per mapping")
                continue
            }
            guard let amount = self.number(entry.value, at: entryPath, .atLeast(0)).value else { continue }
            if entry.key == ResourceSet.gpu && amount.rounded(.towardZero) != amount {
                self.report(entryPath, "a node has whole GPUs, not \(NumberRule.show(amount))")
                continue
            }
            if entry.key.hasPrefix(NodeTypeConfig.acceleratorPrefix) {
                if entry.key.count == NodeTypeConfig.acceleratorPrefix.count {
                    self.report(entryPath, "name the accelerator type, e.g. \"accelerator_type:A100\"")
                    continue
                }
                if let earlier = accelerator {
                    self.report(entryPath, "a node has one accelerator type; \(earlier) is already given")
                    continue
                }
                if amount != 1 {
                    self.report(entryPath, "an accelerator type is offered as 1, not \(NumberRule.show(amount))")
                    continue
                }
                accelerator = entry.key
            }
            resources[entry.key] = ResourceQuantity(amount)
        }
        return resources
    }

    mutating func labels(_ node: ConfigNode, at path: String) -> [String: String] {
        guard case .mapping(let entries) = node else {
            self.report(path, Self.typeMessage("a mapping of label names to strings", node))
            return [:]
        }
        var labels: [String: String] = [:]
        for entry in entries {
            let entryPath = Self.join(path, entry.key)
            guard case .string(let value) = entry.value else {
                self.report(entryPath, Self.typeMessage("a string", entry.value))
                continue
            }
            if entry.key.isEmpty || entry.key.contains(where: { $0 == "=" || $0 == "," }) || value.contains(",") {
                self.report(entryPath, "labels are k=v pairs: no empty name, \"=\" or \",\"")
                continue
            }
            labels[entry.key] = value
        }
        return labels
    }

    mutating func provider(_ node: ConfigNode, at path: String) -> NodeProviderConfig? {
        guard case .mapping(let entries) = node else {
            self.report(path, Self.typeMessage("a mapping such as {type: local}", node))
            return nil
        }
        let typePath = Self.join(path, "type")
        guard let typeEntry = entries.first(where: { $0.key == "type" }) else {
            self.report(typePath, "required field is missing (one of: \(Self.providerTypes.joined(separator: ", ")))")
            return nil
        }
        guard case .string(let type) = typeEntry.value else {
            self.report(typePath, Self.typeMessage("a string", typeEntry.value))
            return nil
        }
        switch type {
        case "local":
            guard let fields = self.fields(of: node, at: path, Self.localProviderFields) else { return nil }
            return .local(LocalProviderConfig(workerPath: self.string(fields, "worker_path").value))
        case "command":
            guard let fields = self.fields(of: node, at: path, Self.commandProviderFields) else { return nil }
            let launch = self.providerCommand(fields, "launch")
            let terminate = self.providerCommand(fields, "terminate")
            let list = self.providerCommand(fields, "list")
            let address = self.string(fields, "head_address")
            let timeout = self.number(fields, "timeout_s", .greaterThan(0))
            guard let launch, let terminate, let list, let timeout = timeout.or(CommandProviderConfig.defaultTimeoutS) else {
                return nil
            }
            return .command(CommandProviderConfig(
                launch: launch, terminate: terminate, list: list, headAddress: address.value, timeoutS: timeout
            ))
        case "kubernetes":
            return self.kubernetesProvider(node, at: path)
        default:
            let hint = Suggestion.closest(to: type, in: Self.providerTypes).map { " (did you mean \($0)?)" } ?? ""
            self.report(typePath, "unknown provider \"\(type)\"\(hint); one of: \(Self.providerTypes.joined(separator: ", "))")
            return nil
        }
    }

    /// A command as an argv list, or a string for `/bin/sh -c` (its arguments as `$1`, `$2`, …).
    /// Nil when invalid or missing (reported).
    mutating func providerCommand(_ fields: ConfigFields, _ name: String) -> [String]? {
        guard let node = fields[name] else {
            self.report(fields.path(name), "required field is missing (a command: a string for /bin/sh, or an argv list)")
            return nil
        }
        switch node {
        case .string(let text) where !text.isEmpty:
            return ["/bin/sh", "-c", "\(text) \"$@\"", "sh"]
        case .sequence(let items) where !items.isEmpty:
            var argv: [String] = []
            for (index, item) in items.enumerated() {
                guard case .string(let word) = item else {
                    self.report("\(fields.path(name))[\(index)]", Self.typeMessage("a string", item))
                    return nil
                }
                argv.append(word)
            }
            return argv
        default:
            self.report(fields.path(name), "must be a non-empty command: a string for /bin/sh, or an argv list")
            return nil
        }
    }
}

extension ConfigValidator {
    /// `provider: {type: kubernetes, …}` (`KubernetesProviderConfig`). Names that end up in the
    /// API (namespace, cluster label, Secret) are checked here, so a mistake stops the head
    /// rather than failing every launch.
    mutating func kubernetesProvider(_ node: ConfigNode, at path: String) -> NodeProviderConfig? {
        guard let fields = self.fields(of: node, at: path, Self.kubernetesProviderFields) else { return nil }
        let namespace = self.string(fields, "namespace")
        if let value = namespace.value, !KubernetesPods.isDNSLabel(value) {
            self.report(fields.path("namespace"), "must be a Kubernetes namespace name (lowercase letters, digits and -, at most 63), not \(ConfigNode.string(value).scalarText!)")
        }
        let clusterName = self.string(fields, "cluster_name")
        if let value = clusterName.value, !KubernetesPods.isLabelValue(value) {
            self.report(fields.path("cluster_name"), "must be a Kubernetes label value (letters, digits, -, _ and ., at most 63, starting and ending with a letter or digit), not \(ConfigNode.string(value).scalarText!)")
        }
        let headAddress = self.string(fields, "head_address")
        if case .absent = headAddress {
            self.report(fields.path("head_address"), "required field is missing: the address worker pods dial, e.g. serve-head.NAMESPACE.svc:6380")
        }
        let apiServer = self.string(fields, "api_server")
        if let value = apiServer.value, !(value.hasPrefix("https://") || value.hasPrefix("http://")) {
            self.report(fields.path("api_server"), "must be a URL (https://HOST:PORT, or http:// for kubectl proxy), not \(ConfigNode.string(value).scalarText!)")
        }
        let tokenSecret = self.string(fields, "token_secret")
        if let value = tokenSecret.value, !KubernetesPods.isDNSSubdomain(value) {
            self.report(fields.path("token_secret"), "must be a Kubernetes Secret name, not \(ConfigNode.string(value).scalarText!)")
        }
        let timeout = self.number(fields, "timeout_s", .greaterThan(0))
        var template: JSONValue?
        if let templateNode = fields["pod_template"] {
            template = self.podTemplate(templateNode, at: fields.path("pod_template"))
        } else {
            self.report(fields.path("pod_template"), "required field is missing: a Pod's metadata and spec, with spec.containers[0] running serve-worker")
        }
        guard let template, let address = headAddress.value, let timeout = timeout.or(KubernetesProviderConfig.defaultTimeoutS),
              let cluster = clusterName.or(KubernetesProviderConfig.defaultClusterName),
              let secret = tokenSecret.or(KubernetesProviderConfig.defaultTokenSecret)
        else { return nil }
        return .kubernetes(KubernetesProviderConfig(
            namespace: namespace.value, clusterName: cluster, headAddress: address,
            kubeconfig: self.string(fields, "kubeconfig").value, context: self.string(fields, "context").value,
            apiServer: apiServer.value, tokenSecret: secret, podTemplate: template, timeoutS: timeout))
    }

    /// A Pod template: a mapping with `spec.containers`, a non-empty list of containers that
    /// each have a name and an image (the schema's own checks are the API server's).
    mutating func podTemplate(_ node: ConfigNode, at path: String) -> JSONValue? {
        guard case .mapping = node else {
            self.report(path, Self.typeMessage("a mapping with metadata and spec", node))
            return nil
        }
        let value = node.jsonValue
        for key in value.objectValue?.keys.sorted() ?? [] where !["metadata", "spec"].contains(key) {
            self.report(Self.join(path, key), "a pod template has metadata and spec only")
        }
        guard let containers = value["spec"]?["containers"]?.arrayValue, !containers.isEmpty else {
            self.report(Self.join(path, "spec.containers"), "required: a list with the serve-worker container")
            return nil
        }
        var valid = true
        for (index, container) in containers.enumerated() {
            if container["name"]?.stringValue?.isEmpty != false || container["image"]?.stringValue?.isEmpty != false {
                self.report("\(Self.join(path, "spec.containers"))[\(index)]", "a container needs a name and an image")
                valid = false
            }
        }
        return valid ? value : nil
    }
}
