import Foundation
import ServeCore

/// Starts and stops worker machines for the node autoscaler: the shape of Ray autoscaler v2's
/// `ICloudInstanceProvider` (PEERS.md §6), made small. Calls are idempotent per request id (a
/// launch asked twice with the same id starts its nodes once), and the provider may be
/// eventually consistent: `nonTerminatedNodes` is the truth the autoscaler reconciles against
/// on every pass. Errors are reported by throwing; the autoscaler records them as events and
/// retries with backoff.
public protocol NodeProvider: Sendable {
    /// "local", "command": shown in the nodes JSON.
    var kind: String { get }

    /// Starts one node per id in `request.nodeIDs`, each a `serve-worker` that registers with
    /// `--node-id` set to its id (that is how a launch is matched to its registration). Returns
    /// the nodes it knows to have started (possibly none yet, for a provider that only queues
    /// the request).
    func launch(_ request: NodeLaunchRequest) async throws -> [ProviderNode]

    /// Stops the nodes; ids it does not know are already gone, which is not an error.
    func terminate(nodeIDs: [String], requestID: String) async throws

    /// Every node it runs that is not terminated (booting or running).
    func nonTerminatedNodes() async throws -> [ProviderNode]
}

/// What a launch asks for.
public struct NodeLaunchRequest: Sendable, Hashable {
    public var requestID: String
    public var nodeType: NodeTypeConfig
    public var nodeIDs: [String]

    public init(requestID: String, nodeType: NodeTypeConfig, nodeIDs: [String]) {
        self.requestID = requestID
        self.nodeType = nodeType
        self.nodeIDs = nodeIDs
    }
}

/// The cluster a provider's nodes join, known once the head has bound its cluster port.
public struct NodeProviderContext: Sendable, Hashable {
    /// The head's cluster address (HOST:PORT) that workers dial.
    public var clusterAddress: String
    /// The cluster token workers present (in `SERVE_TOKEN`, never in arguments, which `ps`
    /// shows).
    public var token: String
    /// The head's state directory (the local provider keeps its workers' logs there).
    public var stateDirectory: URL

    public init(clusterAddress: String, token: String, stateDirectory: URL) {
        self.clusterAddress = clusterAddress
        self.token = token
        self.stateDirectory = stateDirectory
    }

    /// The `serve-worker` arguments for one node of a type.
    public func workerArguments(nodeID: String, type: NodeTypeConfig) -> [String] {
        ["--address", self.clusterAddress, "--node-id", nodeID] + type.workerFlags
    }
}

/// A node as its provider reports it.
public struct ProviderNode: Sendable, Hashable {
    public var nodeID: String
    public var nodeType: String
    /// The provider's word for it ("running", "pending", a cloud's instance state).
    public var state: String

    public init(nodeID: String, nodeType: String, state: String) {
        self.nodeID = nodeID
        self.nodeType = nodeType
        self.state = state
    }
}

/// A provider call that failed, with what to do about it.
public struct NodeProviderError: Error, Sendable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
