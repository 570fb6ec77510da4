import ArgumentParser
import Foundation
import ServeCore
import ServeEmbedded
import ServeHead
import ServeWorker

/// `serve-head`: one per cluster. With CPUs (the default) it also hosts replicas, so this one
/// process is a whole working cluster.
@main
struct ServeHeadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-head",
        abstract: "Run a swift-serve head: controller, HTTP ingress, admin API (and replicas, unless --num-cpus 0).",
        version: ServeVersion.string
    )

    @Option(help: "Cluster port that workers connect to.") var port = 6380
    @Option(name: .customLong("host"), help: "Address the cluster port listens on.") var host = "0.0.0.0"
    @Option(name: .customLong("http-host"), help: "Address of the HTTP ingress.") var httpHost = "0.0.0.0"
    @Option(name: .customLong("http-port"), help: "Port of the HTTP ingress.") var httpPort = 8000
    @Option(name: .customLong("admin-host"), help: "Address of the admin API.") var adminHost = "127.0.0.1"
    @Option(name: .customLong("admin-port"), help: "Port of the admin API.") var adminPort = 8265
    @Option(name: .customLong("num-cpus"), help: "CPUs for replicas on the head (default: cores; 0: host none).") var numCPUs: Double?
    @Option(name: .customLong("num-gpus"), help: "GPUs for replicas on the head (default: detected).") var numGPUs: Double?
    @Option(help: "Memory for replicas on the head, bytes (default: physical).") var memory: Double?
    @Option(help: "Custom resources as JSON, e.g. '{\"custom\": 2}'.") var resources: String?
    @Option(name: .customLong("accelerator-type"), help: "Accelerator type of the head's GPUs, e.g. A100.") var acceleratorType: String?
    @Option(help: "Labels k=v,k2=v2.") var labels: String?
    @Option(help: "Cluster token (default: SERVE_TOKEN, else one kept in the state dir).") var token: String?
    @Option(name: .customLong("state-dir"), help: "Where the head keeps its deployed config and token (default ~/.swift-serve/head).") var stateDir: String?
    @Option(help: "A config to deploy at start (YAML or JSON), instead of the one kept in the state dir.") var config: String?
    @Option(
        name: .customLong("reconnect-grace-s"),
        help: "After a restart, seconds to wait for workers to reconnect with their replicas before starting new ones.")
    var reconnectGrace: Double = 10
    @Option(name: .customLong("cluster-config"), help: "A cluster config (YAML or JSON): node types and the provider the node autoscaler launches them with.") var clusterConfig: String?
    @Option(name: .customLong("heartbeat-timeout-s"), help: "A worker silent this long is declared DEAD and its replicas are replaced (seconds).")
    var heartbeatTimeoutS = FailureDetector.Configuration.defaultHeartbeatTimeout
    @Option(name: .customLong("shutdown-timeout-s"), help: "On SIGTERM, how long requests in flight may take to finish (seconds).")
    var shutdownTimeoutS = 30.0
    @Option(name: .customLong("history-window-s"), help: "How far back the dashboard's timeline goes (seconds; kept per deployment).")
    var historyWindowS = DeploymentHistory.Configuration().window
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        try self.logging.bootstrap()
        var options = HeadOptions()
        options.clusterHost = self.host
        options.clusterPort = self.port
        options.httpHost = self.httpHost
        options.httpPort = self.httpPort
        options.adminHost = self.adminHost
        options.adminPort = self.adminPort
        options.token = self.token
        // Workers heartbeat every 0.5 s: a shorter timeout would declare healthy nodes dead.
        guard self.heartbeatTimeoutS > 0.5 else {
            throw ValidationError("--heartbeat-timeout-s must be more than the 0.5 s heartbeat interval (the default is 5)")
        }
        guard self.shutdownTimeoutS >= 0 else { throw ValidationError("--shutdown-timeout-s must be 0 or more") }
        options.heartbeatTimeout = self.heartbeatTimeoutS
        options.shutdownTimeout = self.shutdownTimeoutS
        guard self.historyWindowS >= 1, self.historyWindowS.isFinite else {
            throw ValidationError("--history-window-s must be a number of seconds, at least 1 (the default is 900)")
        }
        options.historyWindow = self.historyWindowS
        if let stateDir = self.stateDir { options.stateDirectory = URL(fileURLWithPath: stateDir) }
        guard self.reconnectGrace >= 0, self.reconnectGrace.isFinite else {
            throw ValidationError("--reconnect-grace-s must be a number of seconds, at least 0")
        }
        options.reconnectGrace = .milliseconds(Int(self.reconnectGrace * 1000))
        var local = EmbeddedCluster.LocalResources()
        local.numCPUs = self.numCPUs
        local.numGPUs = self.numGPUs
        local.memory = self.memory
        local.custom = try NodeResources.parseCustom(self.resources)
        local.acceleratorType = self.acceleratorType
        local.labels = try NodeResources.parseLabels(self.labels)
        try await ServeProcess.runHead(options: options, resources: local, configPath: self.config, clusterConfigPath: self.clusterConfig, banner: "serve-head")
    }
}
