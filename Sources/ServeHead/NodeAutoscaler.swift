import Logging
import ServeCore
import ServiceLifecycle

/// How a head autoscales its nodes (`serve-head --cluster-config`): the parsed cluster config
/// and how to make its provider once the head knows its cluster address.
public struct NodeAutoscaling: Sendable {
    public var config: ClusterConfig
    public var makeProvider: @Sendable (NodeProviderContext) throws -> any NodeProvider

    public init(config: ClusterConfig, makeProvider: @escaping @Sendable (NodeProviderContext) throws -> any NodeProvider) {
        self.config = config
        self.makeProvider = makeProvider
    }
}

/// The node autoscaler's shell: once a second it gives `ServeCore.NodePlanner` what the
/// controller and the provider see, and carries out what the planner decides (launch through
/// the provider; drain through the controller, then terminate through the provider), recording
/// every launch, termination and failure as an event with its reason. A part of the head's
/// lifecycle (`Service`): it ticks until the head shuts down, then terminates the nodes it launched.
public actor NodeAutoscaler: Service, CustomStringConvertible {
    private var planner: NodePlanner
    private let provider: any NodeProvider
    private let controller: Controller
    private let logger: Logger
    private let origin = ContinuousClock.now
    /// The last listing failure, logged once until listing works again.
    private var listingFailure: String?
    /// Set by `shutdown`: a pass still in flight launches nothing more.
    private var isShutDown = false

    public init(config: ClusterConfig, provider: any NodeProvider, controller: Controller, logger: Logger) {
        self.planner = NodePlanner(config: config, idPrefix: String(UInt16.random(in: 0...UInt16.max), radix: 16))
        self.provider = provider
        self.controller = controller
        self.logger = logger
    }

    /// Seconds on this autoscaler's monotonic clock (the planner's time input).
    private var now: Double {
        let elapsed = ContinuousClock.now - self.origin
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    public nonisolated var description: String { "node autoscaler" }

    /// Ticks once a second until the head shuts down gracefully, then terminates every node it
    /// launched (a cluster without its head has no use for them); cancelled (the head is failing),
    /// it stops ticking and leaves them.
    public func run() async {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.tick()
                try? await Task.sleep(for: .seconds(1))
            }
        }
        guard !Task.isCancelled else { return }
        await self.shutdown()
    }

    /// One pass: observe, plan, act.
    public func tick() async {
        guard !self.isShutDown else { return }
        let snapshot = await self.controller.nodeDemandSnapshot()
        var listed: [ProviderNodeRecord]?
        do {
            listed = try await self.provider.nonTerminatedNodes().map { ProviderNodeRecord(nodeID: $0.nodeID, nodeType: $0.nodeType) }
            self.listingFailure = nil
        } catch {
            if self.listingFailure != "\(error)" {
                self.listingFailure = "\(error)"
                await self.event(before: 0, after: 0, "listing the \(self.provider.kind) provider's nodes failed: \(error)")
            }
        }
        let directives = self.planner.tick(now: self.now, observed: snapshot.nodes, demands: snapshot.demands, providerNodes: listed)
        for directive in directives where !self.isShutDown {
            switch directive {
            case .launch(let launch):
                await self.launch(launch)
            case .terminate(let termination):
                await self.terminate(termination)
            case .report(let text):
                await self.event(before: 0, after: 0, text)
            }
        }
    }

    private func launch(_ launch: NodeLaunch) async {
        guard let type = self.planner.config.nodeType(named: launch.nodeType) else { return }
        let after = self.count(launch.nodeType)
        let before = after - launch.nodeIDs.count
        await self.event(
            before: before, after: after,
            "launching \(launch.nodeIDs.count) × \(launch.nodeType) (\(launch.nodeIDs.joined(separator: ", "))) \(launch.reason)")
        let request = NodeLaunchRequest(requestID: launch.requestID, nodeType: type, nodeIDs: launch.nodeIDs)
        do {
            let started = try await self.provider.launch(request)
            self.planner.launchSucceeded(requestID: launch.requestID, listed: Set(started.map(\.nodeID)))
            if self.isShutDown {
                // Shutdown ran while this launch was in flight: it did not see these nodes.
                try? await self.provider.terminate(nodeIDs: launch.nodeIDs, requestID: "shutdown-\(launch.requestID)")
            }
        } catch {
            let reason = self.planner.launchFailed(requestID: launch.requestID, error: "\(error)", now: self.now)
            await self.event(before: after, after: before, reason)
        }
    }

    private func terminate(_ termination: NodeTermination) async {
        if await self.controller.drainForTermination(termination.nodeID) == .hostsReplicas {
            self.planner.drainRefused(nodeID: termination.nodeID)
            return
        }
        let before = self.count(termination.nodeType)
        await self.event(before: before, after: before - 1, "terminating node \(termination.nodeID) (\(termination.nodeType)): \(termination.reason)")
        do {
            try await self.provider.terminate(nodeIDs: [termination.nodeID], requestID: termination.requestID)
            self.planner.terminateSucceeded(nodeID: termination.nodeID)
        } catch {
            self.planner.terminateFailed(nodeID: termination.nodeID, now: self.now)
            await self.event(
                before: before, after: before,
                "terminating node \(termination.nodeID) failed (retrying in \(Int(NodePlanner.terminateRetryS)) s): \(error)")
        }
    }

    /// Nodes of a type this autoscaler manages (for events' before/after).
    private func count(_ type: String) -> Int {
        self.planner.nodes.values.filter { $0.nodeType == type }.count
    }

    private func event(before: Int, after: Int, _ reason: String) async {
        await self.controller.recordNodeAutoscaling(before: before, after: after, reason: reason)
    }

    /// Terminates every node this autoscaler launched (the head is shutting down).
    private func shutdown() async {
        self.isShutDown = true
        let ids = self.planner.nodes.keys.sorted()
        guard !ids.isEmpty else { return }
        do {
            try await self.provider.terminate(nodeIDs: ids, requestID: "shutdown-\(ids.joined(separator: ","))")
            for id in ids { self.planner.terminateSucceeded(nodeID: id) }
            await self.event(before: ids.count, after: 0, "the head is shutting down: terminated \(ids.joined(separator: ", "))")
        } catch {
            self.logger.error("could not terminate the launched nodes at shutdown", metadata: ["error": "\(error)", "serve.nodes": "\(ids)"])
        }
    }

    /// The autoscaler's part of `GET /api/cluster/nodes`.
    public func statusJSON() -> JSONValue {
        guard case .object(var object) = self.planner.statusJSON(now: self.now) else { return .null }
        object["provider"] = .string(self.provider.kind)
        return .object(object)
    }

    /// The controller's nodes JSON with, for each node this autoscaler launched, its lifecycle
    /// state and idle timer, and the autoscaler's status under `node_autoscaler`.
    func annotate(_ nodes: JSONValue) -> JSONValue {
        guard case .object(var object) = nodes, case .array(let entries)? = object["nodes"] else { return nodes }
        let now = self.now
        object["nodes"] = .array(entries.map { entry in
            guard case .object(var fields) = entry, let id = fields["node_id"]?.stringValue,
                let annotations = self.planner.nodeAnnotations(id, now: now)
            else { return entry }
            fields.merge(annotations) { _, new in new }
            return .object(fields)
        })
        object["node_autoscaler"] = self.statusJSON()
        return .object(object)
    }
}

extension AdminAPI {
    /// `GET /api/cluster/nodes`: the controller's nodes, annotated by the node autoscaler when
    /// the head has one.
    func clusterNodesJSON() async -> JSONValue {
        let nodes = await self.controller.nodesJSON()
        guard let autoscaler = self.nodeAutoscaler else { return nodes }
        return await autoscaler.annotate(nodes)
    }
}
