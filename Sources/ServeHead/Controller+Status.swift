import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// What the controller shows: events, the status and nodes JSON, metrics' counts.
extension Controller {
    // MARK: events and status

    @discardableResult
    func record(_ kind: ServeEvent.Kind, _ deployment: DeploymentID?, before: Int, after: Int, reason: String) -> ServeEvent {
        let event = ServeEvent(time: Date(), kind: kind, deployment: deployment, before: before, after: after, reason: reason)
        self.events.append(event)
        if self.events.count > 1000 { self.events.removeFirst(self.events.count - 1000) }
        // A change of a live deployment's target is marked on its timeline (a deploy starts the
        // timeline, a deletion ends it).
        if let deployment, kind == .autoscale || kind == .scale, before != after, self.deployments[deployment] != nil {
            self.history.decided(
                deployment,
                .init(t: Self.seconds(.now), kind: kind.rawValue, before: before, after: after, reason: reason))
        }
        self.logger.info("\(reason)", metadata: ["serve.deployment": "\(deployment.map { "\($0)" } ?? "-")", "before": "\(before)", "after": "\(after)"])
        return event
    }

    public func eventsJSON() -> JSONValue {
        .object(["events": .array(self.events.map(\.json))])
    }

    public func historyJSON(now: ContinuousClock.Instant = .now, unixNow: Date = Date()) -> JSONValue {
        self.history.json(now: Self.seconds(now), unixNow: unixNow.timeIntervalSince1970)
    }
    /// Replica counts per state and queue lengths, for metrics and the autoscaler.
    public func replicaStates() -> [DeploymentID: [ReplicaState: Int]] {
        var result: [DeploymentID: [ReplicaState: Int]] = [:]
        for entry in self.replicas.values {
            result[entry.record.deployment, default: [:]][entry.record.state, default: 0] += 1
        }
        return result
    }

    /// Requests running at each deployment's replicas, as their nodes last reported (the
    /// nodes' books hold only replicas the head knows: `heartbeat`, `forget`).
    public func ongoingRequests() -> [DeploymentID: Int] {
        var result: [DeploymentID: Int] = [:]
        for node in self.nodes.values {
            for (replicaID, load) in node.loads {
                guard let deployment = self.replicas[replicaID]?.record.deployment else { continue }
                result[deployment, default: 0] += load
            }
        }
        return result
    }

    public func statusJSON() -> JSONValue {
        var apps: [String: JSONValue] = [:]
        let byDeployment = self.replicasByDeployment()
        for app in self.config.applications {
            var deployments: [String: JSONValue] = [:]
            var statuses: [String] = []
            for deployment in app.deployments {
                let id = DeploymentID(app: app.name, name: deployment.name)
                guard let runtime = self.deployments[id] else { continue }
                let entries = (byDeployment[id] ?? []).sorted { $0.record.id < $1.record.id }
                let status = self.deploymentStatus(runtime, entries)
                statuses.append(status)
                let pendingMessage = entries.first { $0.record.state == .pending }?.record.message
                var message = pendingMessage.map { "replicas pending: \($0)" } ?? ""
                if self.holdStartsUntil != nil && entries.filter({ $0.record.state == .running }).count < runtime.target {
                    message = "the head restarted: waiting for workers to reconnect with their replicas before starting new ones"
                }
                if runtime.backoff.consecutiveFailures > 0 {
                    message = "replicas failed to start \(runtime.backoff.consecutiveFailures) time(s) in a row; last: \(runtime.backoff.lastError)"
                }
                var autoscaling: JSONValue = .null
                if let config = runtime.config.autoscaling {
                    autoscaling = .object([
                        "min_replicas": .number(Double(config.minReplicas)),
                        "max_replicas": .number(Double(config.maxReplicas)),
                        "last_decision": runtime.lastAutoscale?.json ?? .null,
                    ])
                }
                deployments[deployment.name] = .object([
                    "autoscaling": autoscaling,
                    "status": .string(status),
                    "target_replicas": .number(Double(runtime.target)),
                    "message": .string(message),
                    "replicas": .array(entries.map { entry in
                        let load = entry.record.nodeID.flatMap { self.nodes[$0]?.loads[entry.record.id] }
                        return .object([
                            "replica_id": .string(entry.record.id),
                            "node_id": entry.record.nodeID.map { .string($0) } ?? .null,
                            "state": .string(entry.record.state.rawValue),
                            "ongoing_requests": .number(Double(load ?? 0)),
                            "model_ids": .array((entry.record.nodeID.flatMap { self.nodes[$0]?.models[entry.record.id] } ?? []).map { .string($0) }),
                            "message": .string(entry.record.message),
                            "resources": .string(entry.grant.description),
                            "gpu_ids": .array(entry.gpuIDs.map { .string($0) }),
                        ])
                    }),
                ])
            }
            let appStatus: String
            if statuses.contains("UNHEALTHY") {
                appStatus = app.deployments.contains { self.deployments[DeploymentID(app: app.name, name: $0.name)]?.everRunning == true }
                    ? "UNHEALTHY" : "DEPLOY_FAILED"
            } else if statuses.allSatisfy({ $0 == "HEALTHY" }) {
                appStatus = "RUNNING"
            } else {
                appStatus = "DEPLOYING"
            }
            apps[app.name] = .object([
                "status": .string(appStatus),
                "route_prefix": .string(app.routePrefix),
                "ingress": .string(app.ingress.name),
                "deployments": .object(deployments),
            ])
        }
        // An app whose last replica has just stopped is gone, even before the next pass tidies
        // `deletingApps` (state reports ask for passes a little later: `reconcileSoon`).
        let appsWithReplicas = Set(byDeployment.keys.map(\.app))
        for app in self.deletingApps where apps[app] == nil && appsWithReplicas.contains(app) {
            apps[app] = .object(["status": "DELETING", "route_prefix": .null, "deployments": .object([:])])
        }
        return .object(["applications": .object(apps)])
    }

    func deploymentStatus(_ runtime: DeploymentRuntime, _ entries: [ReplicaEntry]) -> String {
        if runtime.backoff.isUnhealthy { return "UNHEALTHY" }
        let current = entries.filter { $0.record.specVersion == runtime.specVersion && $0.record.state != .stopping }
        let running = current.filter { $0.record.state == .running }.count
        let old = entries.contains { $0.record.specVersion != runtime.specVersion && $0.record.state != .stopping }
        if old || (!runtime.everRunning && running < runtime.target) { return "UPDATING" }
        if running < runtime.target { return "UPSCALING" }
        if current.count > runtime.target || entries.contains(where: { $0.record.state == .stopping }) { return "DOWNSCALING" }
        return "HEALTHY"
    }

    public func nodesJSON() -> JSONValue {
        let views = Dictionary(uniqueKeysWithValues: self.nodeViews().map { ($0.id, $0) })
        let byNode = self.replicasByNode()
        let nodes = self.nodes.values.sorted { $0.id < $1.id }.map { node -> JSONValue in
            let available = views[node.id]?.available ?? node.total
            return .object([
                "node_id": .string(node.id),
                "address": .string("\(node.address):\(node.port)"),
                "node_type": .string(node.nodeType),
                "state": .string(node.state.rawValue),
                "resources_total": Self.json(node.total),
                "resources_available": Self.json(node.state == .dead ? ResourceSet() : available),
                "labels": .object(node.labels.mapValues { .string($0) }),
                "http_address": node.proxy.flatMap { $0.httpAddress.isEmpty ? nil : JSONValue.string($0.httpAddress) } ?? .null,
                "proxy_status": .string(node.state == .dead ? "NONE" : Self.proxyStatus(node.proxy)),
                "proxy_message": .string(node.proxy?.message ?? ""),
                // The route table the proxy serves from ("epoch.sequence"; null before its first,
                // and for the head's own node, whose proxy is the head's): equal to
                // `route_table_version` once the head's newest table has reached the node.
                "proxy_table_version": node.proxy.flatMap { $0.tableEpoch == 0 ? nil : JSONValue.string("\($0.tableEpoch).\($0.tableSequence)") } ?? .null,
                "replicas": .array((byNode[node.id] ?? []).map(\.record.id).sorted().map { .string($0) }),
            ])
        }
        var version = JSONValue.null
        if let newest = self.routes.version { version = .string(newest.description) }
        return .object(["nodes": .array(nodes), "route_table_version": version])
    }

    /// STARTING, HEALTHY, UNHEALTHY, DRAINING, DRAINED; NONE where no proxy runs.
    static func proxyStatus(_ report: PBProxyReport?) -> String {
        switch report?.status {
        case .starting: "STARTING"
        case .healthy: "HEALTHY"
        case .unhealthy: "UNHEALTHY"
        case .draining: "DRAINING"
        case .drained: "DRAINED"
        case nil, .unspecified, .UNRECOGNIZED, .some(.none): "NONE"
        }
    }

    static func json(_ resources: ResourceSet) -> JSONValue {
        .object(resources.quantities.mapValues { .number($0.doubleValue) })
    }
}


/// One decision, as `GET /api/serve/events` shows it.
public struct ServeEvent: Sendable {
    public enum Kind: String, Sendable { case deploy, scale, autoscale, replica, node, nodeAutoscale = "node_autoscale", warning }
    public var time: Date
    public var kind: Kind
    public var deployment: DeploymentID?
    public var before: Int
    public var after: Int
    public var reason: String

    var json: JSONValue {
        .object([
            "time": .number(self.time.timeIntervalSince1970),
            "kind": .string(self.kind.rawValue),
            "deployment": self.deployment.map { .string("\($0)") } ?? .null,
            "before": .number(Double(self.before)),
            "after": .number(Double(self.after)),
            "reason": .string(self.reason),
        ])
    }
}
