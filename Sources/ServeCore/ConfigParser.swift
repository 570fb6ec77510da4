/// Reads and validates a config file (DESIGN.md "Configuration"): one place where every rule
/// lives, so the head, the CLI and `serve simulate` reject exactly the same configs.
public enum ConfigParser {
    /// Parses YAML or JSON and checks it. Collects every problem (not just the first), each with
    /// its field path, e.g. `applications[1].deployments[0].autoscaling_config.max_replicas:
    /// must be at least min_replicas (3)`, so one round trip shows the user all their mistakes.
    ///
    /// `knownHandlers` are the Swift deployments the workers can run (the stock binaries' `echo`,
    /// `sleep`, `cpu`, `env`, plus whatever is linked); a `handler` outside it is refused here
    /// rather than failing on every replica start. Nil skips that one check: for a config that
    /// passed it when it was deployed and is read back from the head's state dir before any
    /// worker (and so any custom handler) has connected.
    public static func parse(_ text: String, knownHandlers: Set<String>?) throws(ConfigError) -> ServeConfig {
        let root = try Self.document(text)
        var validator = ConfigValidator(knownHandlers: knownHandlers)
        let config = validator.serveConfig(root)
        guard validator.problems.isEmpty else {
            throw ConfigError(problems: validator.problems)
        }
        return config
    }

    /// What is allowed but cannot work as meant, for the deploy answer and the events: a
    /// `user_config.max_batch_size` above `max_ongoing_requests` can never be reached, since a
    /// replica admits at most `max_ongoing_requests` calls and a batch is made of calls it
    /// admitted (Ray's trap, ray-project/ray#43288, where the cap is silent).
    public static func warnings(for config: ServeConfig) -> [ConfigProblem] {
        var warnings: [ConfigProblem] = []
        for (appIndex, app) in config.applications.enumerated() {
            for (index, deployment) in app.deployments.enumerated() {
                guard let size = deployment.userConfig?["max_batch_size"]?.doubleValue.map(Int.init),
                    size > deployment.maxOngoingRequests
                else { continue }
                warnings.append(ConfigProblem(
                    path: "applications[\(appIndex)].deployments[\(index)].user_config.max_batch_size",
                    message: "\(size) can never be reached: a replica of \(deployment.name) takes at most max_ongoing_requests "
                        + "(\(deployment.maxOngoingRequests)) requests at once, so its batches hold at most that many; "
                        + "set max_ongoing_requests to at least max_batch_size × max_concurrent_batches",
                    deployment: DeploymentID(app: app.name, name: deployment.name)))
            }
        }
        return warnings
    }

    /// The document tree. Text that looks like JSON is read as JSON first (exact error
    /// positions, JSON escapes), then as YAML, since YAML flow style (`{applications: []}`) looks
    /// the same; anything else is YAML.
    static func document(_ text: String) throws(ConfigError) -> ConfigNode {
        func failure(_ message: String) -> ConfigError {
            ConfigError(problems: [ConfigProblem(path: "", message: message)])
        }
        let start = text.unicodeScalars.first { !$0.properties.isWhitespace && $0 != "\u{FEFF}" }
        var jsonFailure: JSONParseError?
        if start == "{" || start == "[" {
            do {
                return try JSONParser.parse(text)
            } catch {
                jsonFailure = error
            }
        }
        let node: ConfigNode?
        do {
            node = try ConfigNode.parseYAML(text)
        } catch {
            if let jsonFailure {
                throw failure("not valid JSON at \(jsonFailure)")
            }
            throw failure(error.message)
        }
        guard let node else {
            throw failure("the config is empty; it needs an `applications` list")
        }
        return node
    }
}

/// The outcome of reading one optional field: not there (or null, which YAML writes as an empty
/// value), there but wrong (already reported), or a good value. Cross-field rules run only on
/// good values, so one mistake is not reported twice.
enum FieldRead<Value> {
    case absent
    case invalid
    case value(Value)

    var value: Value? {
        if case .value(let value) = self { value } else { nil }
    }

    /// The value, or `fallback` when absent; nil when invalid.
    func or(_ fallback: Value) -> Value? {
        switch self {
        case .absent: fallback
        case .invalid: nil
        case .value(let value): value
        }
    }

    var isPresent: Bool {
        if case .absent = self { false } else { true }
    }

    /// The value changed by `transform`; absent and invalid stay what they are.
    func map<Other>(_ transform: (Value) -> Other) -> FieldRead<Other> {
        switch self {
        case .absent: .absent
        case .invalid: .invalid
        case .value(let value): .value(transform(value))
        }
    }
}

/// A range rule for a number, with the message that names it.
struct NumberRule {
    var check: (Double) -> Bool
    var requirement: String

    static func atLeast(_ bound: Double) -> NumberRule {
        NumberRule(check: { $0 >= bound }, requirement: "must be at least \(Self.show(bound))")
    }

    static func greaterThan(_ bound: Double) -> NumberRule {
        NumberRule(check: { $0 > bound }, requirement: "must be greater than \(Self.show(bound))")
    }

    static func between(_ low: Double, _ high: Double) -> NumberRule {
        NumberRule(
            check: { $0 >= low && $0 <= high },
            requirement: "must be between \(Self.show(low)) and \(Self.show(high))"
        )
    }

    static func show(_ value: Double) -> String {
        JSONValue.number(value).jsonString()
    }
}

/// A mapping's fields, by canonical name, with the key the user actually wrote (an alias stays
/// an alias in paths).
struct ConfigFields {
    var path: String
    var entries: [String: (key: String, node: ConfigNode)] = [:]

    /// The node of a present, non-null field.
    subscript(name: String) -> ConfigNode? {
        guard let entry = self.entries[name] else { return nil }
        if case .null = entry.node { return nil }
        return entry.node
    }

    /// The path of a field as the user wrote it (the canonical name when absent).
    func path(_ name: String) -> String {
        ConfigValidator.join(self.path, self.entries[name]?.key ?? name)
    }
}

/// A field a mapping may hold, and the other names it is accepted under.
struct FieldSpec {
    var name: String
    var aliases: [String] = []

    init(_ name: String, aliases: [String] = []) {
        self.name = name
        self.aliases = aliases
    }
}

/// Walks a config tree, building the typed config and collecting problems. Every rule is here.
struct ConfigValidator {
    /// Nil: any handler name is accepted (see `ConfigParser.parse`).
    let knownHandlers: Set<String>?
    private(set) var problems: [ConfigProblem] = []

    init(knownHandlers: Set<String>?) {
        self.knownHandlers = knownHandlers
    }

    mutating func report(_ path: String, _ message: String) {
        self.problems.append(ConfigProblem(path: path, message: message))
    }

    static func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }

    // MARK: Schema

    static let topFields = [FieldSpec("proxy_location"), FieldSpec("http_options"), FieldSpec("applications")]
    static let httpFields = [
        FieldSpec("host"), FieldSpec("port"), FieldSpec("request_timeout_s"), FieldSpec("max_body_bytes"),
    ]
    static let applicationFields = [FieldSpec("name"), FieldSpec("route_prefix"), FieldSpec("deployments"), FieldSpec("idempotent"), FieldSpec("ingress")]
    static let deploymentFields = [
        FieldSpec("name"), FieldSpec("handler"), FieldSpec("command"), FieldSpec("health_path"),
        FieldSpec("num_replicas"), FieldSpec("autoscaling_config"),
        FieldSpec("max_ongoing_requests", aliases: ["max_concurrent_queries"]),
        FieldSpec("max_queued_requests"), FieldSpec("user_config"),
        FieldSpec("ray_actor_options", aliases: ["actor_options"]),
        FieldSpec("graceful_shutdown_timeout_s"), FieldSpec("graceful_shutdown_wait_loop_s"),
        FieldSpec("health_check_period_s"), FieldSpec("health_check_timeout_s"),
        FieldSpec("placement_strategy"), FieldSpec("max_replicas_per_node"),
    ]
    static let autoscalingFields = [
        FieldSpec("min_replicas"), FieldSpec("initial_replicas"), FieldSpec("max_replicas"),
        FieldSpec("target_ongoing_requests", aliases: ["target_num_ongoing_requests_per_replica"]),
        FieldSpec("upscale_delay_s"), FieldSpec("downscale_delay_s"), FieldSpec("downscale_to_zero_delay_s"),
        FieldSpec("smoothing_factor"),
        FieldSpec("upscaling_factor", aliases: ["upscale_smoothing_factor"]),
        FieldSpec("downscaling_factor", aliases: ["downscale_smoothing_factor"]),
        FieldSpec("metrics_interval_s"), FieldSpec("look_back_period_s"), FieldSpec("aggregation_function"),
        FieldSpec("panic_window_s"), FieldSpec("panic_threshold"),
    ]
    static let actorOptionFields = [
        FieldSpec("num_cpus"), FieldSpec("num_gpus"), FieldSpec("memory"), FieldSpec("resources"),
        FieldSpec("accelerator_type"), FieldSpec("object_store_memory"), FieldSpec("runtime_env"),
    ]
    static let runtimeEnvFields = [FieldSpec("env_vars"), FieldSpec("working_dir")]

    /// Ray fields that have no meaning here, with what to do instead.
    static let unsupportedHints: [String: String] = [
        "import_path": "not supported: each deployment names a `handler` (a Swift deployment) or a `command`",
        "grpc_options": "not supported: the ingress speaks HTTP/1.1 and h2c; see http_options",
        "pip": "not supported: install packages into the image or environment the command runs in",
        "conda": "not supported: install packages into the image or environment the command runs in",
    ]

    /// Splits a mapping into known fields, reporting unknown keys (with a "did you mean"),
    /// a key given twice, and a field given under two of its names. Nil when it is not a mapping.
    mutating func fields(of node: ConfigNode, at path: String, _ specs: [FieldSpec]) -> ConfigFields? {
        guard case .mapping(let entries) = node else {
            self.report(path, "must be a mapping, not \(node.kindDescription)")
            return nil
        }
        var canonicalByKey: [String: String] = [:]
        for spec in specs {
            canonicalByKey[spec.name] = spec.name
            for alias in spec.aliases { canonicalByKey[alias] = spec.name }
        }
        var fields = ConfigFields(path: path)
        for entry in entries {
            let entryPath = Self.join(path, entry.key)
            guard let canonical = canonicalByKey[entry.key] else {
                self.report(entryPath, Self.unknownFieldMessage(entry.key, known: specs.map(\.name)))
                continue
            }
            if let earlier = fields.entries[canonical] {
                if earlier.key == entry.key {
                    self.report(entryPath, "given more than once; each key may appear once per mapping")
                } else {
                    self.report(entryPath, "same field as `\(earlier.key)`; give only one of them")
                }
                continue
            }
            fields.entries[canonical] = (entry.key, entry.value)
        }
        return fields
    }

    static func unknownFieldMessage(_ key: String, known: [String]) -> String {
        if let hint = Self.unsupportedHints[key] {
            return "unknown field (\(hint))"
        }
        if let suggestion = Suggestion.closest(to: key, in: known) {
            return "unknown field (did you mean \(suggestion)?)"
        }
        return "unknown field (expected one of: \(known.joined(separator: ", ")))"
    }

    // MARK: Typed readers

    mutating func string(_ fields: ConfigFields, _ name: String, nonEmpty: Bool = true) -> FieldRead<String> {
        guard let node = fields[name] else { return .absent }
        guard case .string(let value) = node else {
            self.report(fields.path(name), Self.typeMessage("a string", node))
            return .invalid
        }
        if nonEmpty && value.isEmpty {
            self.report(fields.path(name), "must not be empty")
            return .invalid
        }
        return .value(value)
    }

    mutating func number(_ fields: ConfigFields, _ name: String, _ rule: NumberRule? = nil) -> FieldRead<Double> {
        guard let node = fields[name] else { return .absent }
        return self.number(node, at: fields.path(name), rule)
    }

    mutating func number(_ node: ConfigNode, at path: String, _ rule: NumberRule? = nil) -> FieldRead<Double> {
        self.number(node, at: path, expected: "a number", rule) { value in
            value.isFinite ? nil : "must be a finite number"
        }
    }

    mutating func integer(_ fields: ConfigFields, _ name: String, _ rule: NumberRule? = nil) -> FieldRead<Int> {
        guard let node = fields[name] else { return .absent }
        return self.integer(node, at: fields.path(name), rule)
    }

    mutating func integer(_ node: ConfigNode, at path: String, _ rule: NumberRule? = nil) -> FieldRead<Int> {
        self.number(node, at: path, expected: "a whole number", rule) { value in
            value.isFinite && value.rounded(.towardZero) == value && value.magnitude < 9_007_199_254_740_992
                ? nil : "must be a whole number, not \(NumberRule.show(value))"
        }.map { Int($0) }
    }

    /// A number of the kind `problem` accepts (it says what is wrong with any other) that meets
    /// `rule`; anything else, a node that is no number at all too (not `expected`), is reported
    /// at `path`, one problem per field.
    private mutating func number(
        _ node: ConfigNode,
        at path: String,
        expected: String,
        _ rule: NumberRule?,
        problem: (Double) -> String?
    ) -> FieldRead<Double> {
        guard case .number(let value) = node else {
            self.report(path, Self.typeMessage(expected, node))
            return .invalid
        }
        if let problem = problem(value) {
            self.report(path, problem)
            return .invalid
        }
        if let rule, !rule.check(value) {
            self.report(path, "\(rule.requirement), not \(NumberRule.show(value))")
            return .invalid
        }
        return .value(value)
    }

    mutating func replicaCount(_ fields: ConfigFields, _ name: String, atLeast low: Double) -> FieldRead<Int> {
        guard let node = fields[name] else { return .absent }
        return self.replicaCount(node, at: fields.path(name), atLeast: low)
    }

    /// A replica count: a whole number from `low` to `ConfigLimits.maxReplicasPerDeployment`.
    mutating func replicaCount(_ node: ConfigNode, at path: String, atLeast low: Double) -> FieldRead<Int> {
        let read = self.integer(node, at: path, .atLeast(low))
        guard let value = read.value else { return read }
        guard value <= ConfigLimits.maxReplicasPerDeployment else {
            self.report(
                path,
                "must be at most \(ConfigLimits.maxReplicasPerDeployment) (the most replicas one deployment may ask for), not \(value)"
            )
            return .invalid
        }
        return read
    }

    static func typeMessage(_ expected: String, _ node: ConfigNode) -> String {
        if let text = node.scalarText, case .null = node {
            return "must be \(expected), not \(text)"
        } else if let text = node.scalarText {
            return "must be \(expected), not \(node.kindDescription) (\(text))"
        }
        return "must be \(expected), not \(node.kindDescription)"
    }

    // MARK: The document

    mutating func serveConfig(_ root: ConfigNode) -> ServeConfig {
        guard case .mapping = root else {
            self.report(
                "",
                "the config must be a mapping with `applications` (and optionally `http_options`), not \(root.kindDescription)"
            )
            return ServeConfig()
        }
        guard let fields = self.fields(of: root, at: "", Self.topFields) else { return ServeConfig() }
        var config = ServeConfig()
        if let value = self.string(fields, "proxy_location").value {
            if let location = ProxyLocation.allCases.first(where: { $0.rawValue.lowercased() == value.lowercased() }) {
                config.proxyLocation = location
            } else {
                let known = ProxyLocation.allCases.map(\.rawValue)
                let hint = Suggestion.closest(to: value, in: known).map { " (did you mean \($0)?)" } ?? ""
                self.report(fields.path("proxy_location"), "must be EveryNode, HeadOnly or Disabled, not \"\(value)\"\(hint)")
            }
        }
        if let node = fields["http_options"] {
            config.httpOptions = self.httpOptions(node, at: fields.path("http_options"))
        }
        guard let node = fields["applications"] else {
            self.report("applications", "required field is missing (a list of applications; `[]` deploys nothing)")
            return config
        }
        config.applications = self.applications(node, at: fields.path("applications"))
        return config
    }

    mutating func httpOptions(_ node: ConfigNode, at path: String) -> HTTPOptions {
        var options = HTTPOptions()
        guard let fields = self.fields(of: node, at: path, Self.httpFields) else { return options }
        if let host = self.string(fields, "host").value { options.host = host }
        if let port = self.integer(fields, "port", .between(0, 65535)).value { options.port = port }
        if let timeout = self.number(fields, "request_timeout_s", .greaterThan(0)).value {
            options.requestTimeoutS = timeout
        }
        if let limit = self.integer(fields, "max_body_bytes", .greaterThan(0)).value { options.maxBodyBytes = limit }
        return options
    }

    mutating func applications(_ node: ConfigNode, at path: String) -> [ApplicationConfig] {
        guard case .sequence(let items) = node else {
            self.report(path, Self.typeMessage("a list of applications", node))
            return []
        }
        if items.count > ConfigLimits.maxApplications {
            self.report(path, "lists \(items.count) applications; a config may hold at most \(ConfigLimits.maxApplications)")
            return []
        }
        var applications: [ApplicationConfig] = []
        var indexByName: [String: Int] = [:]
        var ownerByPrefix: [String: (index: Int, name: String)] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let (application, fields) = self.application(item, at: itemPath) else { continue }
            if let name = application.name.nilIfEmpty {
                if let earlier = indexByName[name] {
                    self.report(fields.path("name"), "duplicate application name \"\(name)\" (also \(path)[\(earlier)])")
                } else {
                    indexByName[name] = index
                }
            }
            if let prefix = application.routePrefix.nilIfEmpty {
                if let owner = ownerByPrefix[prefix] {
                    let ownerName = owner.name.isEmpty ? "" : "application \"\(owner.name)\", "
                    self.report(
                        fields.path("route_prefix"),
                        "\"\(prefix)\" is already the route prefix of \(ownerName)\(path)[\(owner.index)]; "
                            + "each application needs its own"
                    )
                } else {
                    ownerByPrefix[prefix] = (index, application.name)
                }
            }
            applications.append(application)
        }
        let total = applications.reduce(0) { sum, application in
            application.deployments.reduce(sum) { $0 + $1.initialReplicaCount }
        }
        if total > ConfigLimits.maxReplicasPerConfig {
            self.report(
                path,
                "ask for \(total) replicas in all (num_replicas, or initial_replicas and min_replicas when autoscaled); "
                    + "a config may ask for at most \(ConfigLimits.maxReplicasPerConfig)"
            )
        }
        return applications
    }

    /// An application and its fields (for paths of cross-application problems); nil when it is
    /// not a mapping at all.
    mutating func application(_ node: ConfigNode, at path: String) -> (ApplicationConfig, ConfigFields)? {
        guard let fields = self.fields(of: node, at: path, Self.applicationFields) else { return nil }
        var application = ApplicationConfig(name: "", routePrefix: "/", deployments: [])
        switch self.string(fields, "name") {
        case .absent: self.report(fields.path("name"), "required field is missing")
        case .invalid: break
        case .value(let name):
            if name.contains("/") {
                self.report(fields.path("name"), "must not contain \"/\" (it separates application and deployment)")
            } else {
                application.name = name
            }
        }
        switch self.string(fields, "route_prefix") {
        case .absent: application.routePrefix = "/"
        case .invalid: application.routePrefix = ""
        case .value(let prefix):
            if !prefix.hasPrefix("/") {
                self.report(fields.path("route_prefix"), "must start with \"/\", not \"\(prefix)\"")
                application.routePrefix = ""
            } else if prefix != "/" && prefix.hasSuffix("/") {
                self.report(
                    fields.path("route_prefix"),
                    "must not end with \"/\" (write \"\(prefix.dropLast())\"; it also matches \"\(prefix)…\")"
                )
                application.routePrefix = ""
            } else if prefix.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0 == "?" || $0 == "#" }) {
                self.report(fields.path("route_prefix"), "must be a plain URL path (no spaces, \"?\" or \"#\")")
                application.routePrefix = ""
            } else if prefix == "/-" || prefix.hasPrefix("/-/") {
                // Every proxy answers /-/healthz and /-/routes itself (DESIGN.md): an app there
                // would be hidden behind them, or hide them from load balancers.
                self.report(
                    fields.path("route_prefix"),
                    "\"\(prefix)\" is under \"/-/\", which is reserved for the proxy's own endpoints (/-/healthz, /-/routes)"
                )
                application.routePrefix = ""
            } else {
                application.routePrefix = prefix
            }
        }
        if let node = fields["idempotent"] {
            if case .bool(let idempotent) = node {
                application.idempotent = idempotent
            } else {
                self.report(fields.path("idempotent"), Self.typeMessage("true or false", node))
            }
        }
        guard let deploymentsNode = fields["deployments"] else {
            self.report(fields.path("deployments"), "required field is missing (a list of at least one deployment)")
            return (application, fields)
        }
        application.deployments = self.deployments(deploymentsNode, at: fields.path("deployments"))
        switch self.string(fields, "ingress") {
        case .absent, .invalid: break
        case .value(let name):
            if application.deployment(named: name) != nil {
                application.ingressName = name
            } else if !application.deployments.isEmpty {
                let names = application.deployments.map { "\"\($0.name)\"" }.joined(separator: ", ")
                self.report(fields.path("ingress"), "names no deployment of this application (it has \(names))")
            }
        }
        return (application, fields)
    }

    mutating func deployments(_ node: ConfigNode, at path: String) -> [DeploymentConfig] {
        guard case .sequence(let items) = node else {
            self.report(path, Self.typeMessage("a list of deployments", node))
            return []
        }
        if items.isEmpty {
            self.report(path, "must list at least one deployment (the first takes the application's traffic)")
        }
        var deployments: [DeploymentConfig] = []
        var indexByName: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let (deployment, fields) = self.deployment(item, at: itemPath) else { continue }
            if let name = deployment.name.nilIfEmpty {
                if let earlier = indexByName[name] {
                    self.report(
                        fields.path("name"),
                        "duplicate deployment name \"\(name)\" in this application (also \(path)[\(earlier)])"
                    )
                } else {
                    indexByName[name] = index
                }
            }
            deployments.append(deployment)
        }
        return deployments
    }

    mutating func deployment(_ node: ConfigNode, at path: String) -> (DeploymentConfig, ConfigFields)? {
        guard let fields = self.fields(of: node, at: path, Self.deploymentFields) else { return nil }
        var deployment = DeploymentConfig(name: "")
        self.readName(fields, into: &deployment)
        self.readWhatRuns(fields, at: path, into: &deployment)
        self.readReplicaCount(fields, into: &deployment)
        self.readQueueing(fields, into: &deployment)
        self.readOptions(fields, into: &deployment)
        self.readTimings(fields, into: &deployment)
        self.readPlacement(fields, into: &deployment)
        return (deployment, fields)
    }

    /// `name`: required; no "#" or "/" (they separate replica ids and application names).
    private mutating func readName(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        switch self.string(fields, "name") {
        case .absent: self.report(fields.path("name"), "required field is missing")
        case .invalid: break
        case .value(let name):
            if name.contains("#") || name.contains("/") {
                self.report(
                    fields.path("name"),
                    "must not contain \"#\" or \"/\" (they separate replica ids and application names)"
                )
            } else {
                deployment.name = name
            }
        }
    }

    /// What a replica runs: exactly one of `handler` (a known Swift deployment) and `command`,
    /// and `health_path` for a command.
    private mutating func readWhatRuns(
        _ fields: ConfigFields,
        at path: String,
        into deployment: inout DeploymentConfig
    ) {
        let handler = self.string(fields, "handler")
        let command = self.command(fields)
        if handler.isPresent && command.isPresent {
            self.report(fields.path("command"), "give either handler or command, not both")
        } else if !handler.isPresent && !command.isPresent {
            self.report(
                path,
                "needs a handler (a Swift deployment, e.g. \"echo\") or a command (a program run per replica)"
            )
        }
        if let name = handler.value {
            if self.knownHandlers?.contains(name) ?? true {
                deployment.handler = name
            } else {
                self.report(fields.path("handler"), self.unknownHandlerMessage(name))
            }
        }
        deployment.command = command.value
        if let healthPath = self.string(fields, "health_path").value {
            if !healthPath.hasPrefix("/") {
                self.report(fields.path("health_path"), "must start with \"/\", not \"\(healthPath)\"")
            } else if handler.isPresent {
                self.report(fields.path("health_path"), "only applies to command deployments")
            } else {
                deployment.healthPath = healthPath
            }
        }
    }

    /// How many replicas: `num_replicas` (a count, or "auto"), or `autoscaling_config`, whose
    /// defaults "auto" sets; a count and `autoscaling_config` together are refused.
    private mutating func readReplicaCount(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        let numReplicas = self.numReplicas(fields)
        var autoscalingBase = AutoscalingConfig()
        if case .value(.auto) = numReplicas { autoscalingBase = .auto }
        if let node = fields["autoscaling_config"] {
            if case .value(.fixed) = numReplicas {
                self.report(
                    fields.path("num_replicas"),
                    "cannot be set together with autoscaling_config (only \"auto\" can); remove one of them"
                )
            }
            deployment.autoscaling = self.autoscaling(node, at: fields.path("autoscaling_config"), base: autoscalingBase)
            deployment.numReplicas = numReplicas.value == .auto ? .auto : nil
        } else {
            switch numReplicas {
            case .value(.auto):
                deployment.numReplicas = .auto
                deployment.autoscaling = .auto
            case .value(let fixed): deployment.numReplicas = fixed
            case .absent, .invalid: deployment.numReplicas = .fixed(1)
            }
        }
    }

    /// `max_ongoing_requests` (at least 1) and `max_queued_requests` (-1: unbounded, 0: no queue).
    private mutating func readQueueing(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        if let limit = self.integer(fields, "max_ongoing_requests", .atLeast(1)).value {
            deployment.maxOngoingRequests = limit
        }
        if let node = fields["max_queued_requests"] {
            let fieldPath = fields.path("max_queued_requests")
            if let limit = self.integer(node, at: fieldPath).value {
                if limit < -1 {
                    self.report(fieldPath, "must be -1 (unbounded) or at least 0 (0: no queue), not \(limit)")
                } else {
                    deployment.maxQueuedRequests = limit
                }
            }
        }
    }

    /// `user_config` (its conventional keys checked) and `ray_actor_options`.
    private mutating func readOptions(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        if let node = fields["user_config"] {
            deployment.userConfig = node.jsonValue
            self.conventionalUserConfig(node, at: fields.path("user_config"))
        }
        if let node = fields["ray_actor_options"] {
            deployment.actorOptions = self.actorOptions(node, at: fields.path("ray_actor_options"))
        }
    }

    /// The graceful shutdown and health check timings.
    private mutating func readTimings(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        if let value = self.number(fields, "graceful_shutdown_timeout_s", .atLeast(0)).value {
            deployment.gracefulShutdownTimeoutS = value
        }
        // Accepted and checked for Ray compatibility, with nothing to set: Ray polls a stopping
        // replica every graceful_shutdown_wait_loop_s until its requests drain; here the last
        // request to end wakes the stop at once, and a stopping replica refuses new work to the
        // router from its first moment (README, "Configuration").
        _ = self.number(fields, "graceful_shutdown_wait_loop_s", .atLeast(0))
        if let value = self.number(fields, "health_check_period_s", .greaterThan(0)).value {
            deployment.healthCheckPeriodS = value
        }
        if let value = self.number(fields, "health_check_timeout_s", .greaterThan(0)).value {
            deployment.healthCheckTimeoutS = value
        }
    }

    /// `placement_strategy` (PACK or SPREAD, any case) and `max_replicas_per_node`.
    private mutating func readPlacement(_ fields: ConfigFields, into deployment: inout DeploymentConfig) {
        if let value = self.string(fields, "placement_strategy").value {
            if let strategy = PlacementStrategy(rawValue: value.uppercased()) {
                deployment.placementStrategy = strategy
            } else {
                let known = PlacementStrategy.allCases.map(\.rawValue)
                let hint = Suggestion.closest(to: value.uppercased(), in: known).map { " (did you mean \($0)?)" } ?? ""
                self.report(fields.path("placement_strategy"), "must be PACK or SPREAD, not \"\(value)\"\(hint)")
            }
        }
        if let limit = self.integer(fields, "max_replicas_per_node", .atLeast(1)).value {
            deployment.maxReplicasPerNode = limit
        }
    }

    /// The `user_config` keys the `Serve` library reads by convention (README, "Batching and
    /// multiplexing"): checked here, so a wrong one is refused with its path rather than
    /// ignored by every replica. Other keys are the deployment's own.
    mutating func conventionalUserConfig(_ node: ConfigNode, at path: String) {
        guard case .mapping(let entries) = node else { return }
        for entry in entries {
            let at = Self.join(path, entry.key)
            switch entry.key {
            case "max_batch_size", "max_concurrent_batches", "max_num_models_per_replica":
                _ = self.integer(entry.value, at: at, .between(1, 1_000_000))
            case "batch_wait_timeout_s":
                _ = self.number(entry.value, at: at, .between(0, 3600))
            default:
                break
            }
        }
    }

    func unknownHandlerMessage(_ name: String) -> String {
        let known = (self.knownHandlers ?? []).sorted()
        guard !known.isEmpty else {
            return "unknown handler \"\(name)\" (no Swift deployments are registered; use command)"
        }
        let listing = known.joined(separator: ", ")
        if let suggestion = Suggestion.closest(to: name, in: known) {
            return "unknown handler \"\(name)\" (did you mean \(suggestion)? known: \(listing))"
        }
        return "unknown handler \"\(name)\" (known: \(listing))"
    }

    mutating func command(_ fields: ConfigFields) -> FieldRead<[String]> {
        guard let node = fields["command"] else { return .absent }
        let path = fields.path("command")
        guard case .sequence(let items) = node else {
            self.report(path, Self.typeMessage("a list of strings (the program and its arguments)", node))
            return .invalid
        }
        guard !items.isEmpty else {
            self.report(path, "must not be empty: it names the program to run")
            return .invalid
        }
        var arguments: [String] = []
        var valid = true
        for (index, item) in items.enumerated() {
            guard case .string(let argument) = item else {
                self.report("\(path)[\(index)]", Self.typeMessage("a string", item))
                valid = false
                continue
            }
            arguments.append(argument)
        }
        if valid && arguments[0].isEmpty {
            self.report("\(path)[0]", "must name the program to run, not be empty")
            valid = false
        }
        return valid ? .value(arguments) : .invalid
    }

    mutating func numReplicas(_ fields: ConfigFields) -> FieldRead<NumReplicas> {
        guard let node = fields["num_replicas"] else { return .absent }
        let path = fields.path("num_replicas")
        switch node {
        case .string("auto"):
            return .value(.auto)
        case .number:
            guard let count = self.replicaCount(node, at: path, atLeast: 0).value else { return .invalid }
            return .value(.fixed(count))
        default:
            self.report(path, Self.typeMessage("a whole number of at least 0, or \"auto\"", node))
            return .invalid
        }
    }

    mutating func autoscaling(_ node: ConfigNode, at path: String, base: AutoscalingConfig) -> AutoscalingConfig {
        var config = base
        guard let fields = self.fields(of: node, at: path, Self.autoscalingFields) else { return config }
        let minimum = self.replicaCount(fields, "min_replicas", atLeast: 0)
        let initial = self.replicaCount(fields, "initial_replicas", atLeast: 0)
        let maximum = self.replicaCount(fields, "max_replicas", atLeast: 1)
        if let value = minimum.value { config.minReplicas = value }
        if let value = initial.value { config.initialReplicas = value }
        if let value = maximum.value { config.maxReplicas = value }
        if let low = minimum.or(base.minReplicas), let high = maximum.or(base.maxReplicas), low > high {
            let defaulted = maximum.isPresent ? "" : "; it defaults to \(base.maxReplicas), so set it"
            self.report(fields.path("max_replicas"), "must be at least min_replicas (\(low))\(defaulted)")
        } else if let low = minimum.or(base.minReplicas), let high = maximum.or(base.maxReplicas),
            let start = initial.value, start < low || start > high
        {
            self.report(
                fields.path("initial_replicas"),
                "must be between min_replicas (\(low)) and max_replicas (\(high)), not \(start)"
            )
        }
        if let value = self.number(fields, "target_ongoing_requests", .greaterThan(0)).value {
            config.targetOngoingRequests = value
        }
        if let value = self.number(fields, "upscale_delay_s", .atLeast(0)).value { config.upscaleDelayS = value }
        if let value = self.number(fields, "downscale_delay_s", .atLeast(0)).value { config.downscaleDelayS = value }
        if let value = self.number(fields, "downscale_to_zero_delay_s", .atLeast(0)).value {
            config.downscaleToZeroDelayS = value
        }
        if let value = self.number(fields, "smoothing_factor", .greaterThan(0)).value { config.smoothingFactor = value }
        if let value = self.number(fields, "upscaling_factor", .greaterThan(0)).value { config.upscalingFactor = value }
        if let value = self.number(fields, "downscaling_factor", .greaterThan(0)).value {
            config.downscalingFactor = value
        }
        if let value = self.number(fields, "metrics_interval_s", .greaterThan(0)).value {
            config.metricsIntervalS = value
        }
        if let value = self.number(fields, "look_back_period_s", .greaterThan(0)).value {
            config.lookBackPeriodS = value
        }
        if let value = self.string(fields, "aggregation_function").value {
            if AutoscalingConfig.aggregationFunctions.contains(value) {
                config.aggregationFunction = value
            } else {
                self.report(fields.path("aggregation_function"), "must be mean, max or min, not \"\(value)\"")
            }
        }
        self.panicMode(fields, into: &config)
        return config
    }

    /// `panic_window_s` (> 0, at most `look_back_period_s`) and `panic_threshold` (> 1): both
    /// or neither; the missing one is reported at its own path.
    mutating func panicMode(_ fields: ConfigFields, into config: inout AutoscalingConfig) {
        let window = self.number(fields, "panic_window_s", .greaterThan(0))
        let threshold = self.number(fields, "panic_threshold", .greaterThan(1))
        switch (window.isPresent, threshold.isPresent) {
        case (true, false):
            self.report(fields.path("panic_threshold"), "must be set together with panic_window_s (e.g. 2.0 = 200 %)")
            return
        case (false, true):
            self.report(fields.path("panic_window_s"), "must be set together with panic_threshold")
            return
        default:
            break
        }
        guard let windowS = window.value, let ratio = threshold.value else { return }
        guard windowS <= config.lookBackPeriodS else {
            self.report(
                fields.path("panic_window_s"),
                "must be at most look_back_period_s (\(NumberRule.show(config.lookBackPeriodS))), not \(NumberRule.show(windowS))"
            )
            return
        }
        config.panicWindowS = windowS
        config.panicThreshold = ratio
    }

    mutating func actorOptions(_ node: ConfigNode, at path: String) -> ActorOptions {
        var options = ActorOptions()
        guard let fields = self.fields(of: node, at: path, Self.actorOptionFields) else { return options }
        if let value = self.resourceAmount(fields, "num_cpus").value { options.numCPUs = value }
        if let value = self.resourceAmount(fields, "num_gpus").value {
            // Ray shares a GPU only below one: 0.5 is half a device, 2 is two devices, and 1.5
            // would be neither (PEERS.md §5 "GPUs above 1 must be whole numbers").
            if value > 1 && value.rounded(.towardZero) != value {
                self.report(
                    fields.path("num_gpus"),
                    "a GPU request above 1 must be a whole number (fractions share one GPU), not \(NumberRule.show(value))"
                )
            } else {
                options.numGPUs = value
            }
        }
        if let value = self.resourceAmount(fields, "memory").value { options.memory = value }
        if let value = self.number(fields, "object_store_memory", .atLeast(0)).value {
            options.objectStoreMemory = value
        }
        if let value = self.string(fields, "accelerator_type").value { options.acceleratorType = value }
        if let node = fields["resources"] {
            options.resources = self.customResources(node, at: fields.path("resources"))
        }
        if let node = fields["runtime_env"] {
            options.runtimeEnv = self.runtimeEnv(node, at: fields.path("runtime_env"))
        }
        return options
    }

    mutating func resourceAmount(_ fields: ConfigFields, _ name: String) -> FieldRead<Double> {
        guard let node = fields[name] else { return .absent }
        return self.resourceAmount(node, at: fields.path(name))
    }

    /// A resource a replica reserves: at least 0, at most `ConfigLimits.maxResourceAmount`, and
    /// a whole number of the 1/10,000 steps the head counts in (DESIGN.md "Scheduling and
    /// resources"), so that what is reserved is exactly what was asked for.
    mutating func resourceAmount(_ node: ConfigNode, at path: String) -> FieldRead<Double> {
        let read = self.number(node, at: path, .atLeast(0))
        guard let value = read.value else { return read }
        guard value <= ConfigLimits.maxResourceAmount else {
            self.report(
                path,
                "must be at most \(NumberRule.show(ConfigLimits.maxResourceAmount)) (the most one node may offer), not \(NumberRule.show(value))"
            )
            return .invalid
        }
        guard ConfigLimits.isWholeSteps(value) else {
            self.report(
                path,
                "must be a multiple of 0.0001 (resources are counted in steps of 1/10,000), not \(NumberRule.show(value))"
            )
            return .invalid
        }
        return read
    }

    /// Custom resources: non-negative amounts by name. `CPU`, `GPU` and `memory` have their own
    /// fields, and Ray refuses them here too, since giving both would be ambiguous.
    mutating func customResources(_ node: ConfigNode, at path: String) -> [String: Double] {
        guard case .mapping(let entries) = node else {
            self.report(path, Self.typeMessage("a mapping of resource names to amounts", node))
            return [:]
        }
        let ownFields = [ResourceSet.cpu: "num_cpus", ResourceSet.gpu: "num_gpus", ResourceSet.memory: "memory"]
        var resources: [String: Double] = [:]
        for entry in entries {
            let entryPath = Self.join(path, entry.key)
            if let own = ownFields[entry.key] {
                self.report(entryPath, "use ray_actor_options.\(own) instead")
                continue
            }
            if entry.key.isEmpty {
                self.report(entryPath, "a resource needs a name")
                continue
            }
            if resources[entry.key] != nil {
                self.report(entryPath, "given more than once; each key may appear once per mapping")
                continue
            }
            if let amount = self.resourceAmount(entry.value, at: entryPath).value {
                resources[entry.key] = amount
            }
        }
        return resources
    }

    mutating func runtimeEnv(_ node: ConfigNode, at path: String) -> RuntimeEnv {
        var environment = RuntimeEnv()
        guard let fields = self.fields(of: node, at: path, Self.runtimeEnvFields) else { return environment }
        if let value = self.string(fields, "working_dir").value { environment.workingDir = value }
        guard let node = fields["env_vars"] else { return environment }
        let varsPath = fields.path("env_vars")
        guard case .mapping(let entries) = node else {
            self.report(varsPath, Self.typeMessage("a mapping of variable names to strings", node))
            return environment
        }
        for entry in entries {
            let entryPath = Self.join(varsPath, entry.key)
            if entry.key.isEmpty || entry.key.contains("=") || entry.key.contains("\0") {
                self.report(entryPath, "is not a valid environment variable name")
                continue
            }
            guard case .string(let value) = entry.value else {
                // Ray requires strings here too; a bare YAML `4` is the usual slip.
                let hint = entry.value.scalarText.map { "; quote it: \"\($0)\"" } ?? ""
                self.report(entryPath, Self.typeMessage("a string", entry.value) + hint)
                continue
            }
            if value.contains("\0") {
                self.report(entryPath, "must not contain a NUL character")
                continue
            }
            environment.envVars[entry.key] = value
        }
        return environment
    }
}

extension String {
    fileprivate var nilIfEmpty: String? {
        self.isEmpty ? nil : self
    }
}
