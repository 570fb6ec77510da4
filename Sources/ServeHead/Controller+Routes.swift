import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// The route tables every node's proxy serves from.
extension Controller {
    /// Routes for a change of the models replicas hold: one table `reportCoalescing` after the
    /// first change of a burst (models thrashing on many nodes would otherwise rebuild the whole
    /// table on every heartbeat), well within the 0.5 s DESIGN.md allows.
    func publishRoutesSoon() {
        guard !self.routesScheduled else { return }
        self.routesScheduled = true
        Task {
            try? await Task.sleep(for: Self.reportCoalescing)
            self.scheduledPublish()
        }
    }

    /// The whole newest table as a message, made once for all the nodes that register while it
    /// is newest (a hundred nodes rejoining at once would otherwise serialize every replica a
    /// hundred times); nil before the first table.
    func wholeTableFrame() -> RPCFrame<PBHeadMessage>? {
        guard let version = self.routes.version else { return nil }
        if let made = self.wholeTableMade, made.version == version { return made.frame }
        guard let whole = self.routes.wholeTable(), let frame = self.frame(.routes(whole)) else { return nil }
        self.wholeTableMade = (version, frame)
        return frame
    }

    func scheduledPublish() {
        self.routesScheduled = false
        self.publishRoutes()
    }

    /// Gives every proxy the RUNNING replicas of every deployment: the ingress deployments for
    /// HTTP traffic, all of them for handles.
    func publishRoutes() {
        let byDeployment = self.replicasByDeployment()
        func route(_ deployment: DeploymentConfig, of app: ApplicationConfig) -> DeploymentRoute {
            let id = DeploymentID(app: app.name, name: deployment.name)
            let replicas = (byDeployment[id] ?? [])
                .filter { $0.record.state == .running }
                .compactMap { entry -> ReplicaRoute? in
                    // A DRAINING node's replicas serve until they are stopped (after their
                    // replacements run); a DEAD node's are gone.
                    guard let nodeID = entry.record.nodeID, let node = self.nodes[nodeID], node.state != .dead else { return nil }
                    return ReplicaRoute(
                        id: entry.record.id, nodeID: nodeID, host: node.address, port: node.port, models: node.models[entry.record.id] ?? [])
                }
                .sorted { $0.id < $1.id }
            // Requests wait for a replica that is coming (cold start, PENDING), not for one that
            // keeps failing to start: those are answered 503 with the reason.
            let backoff = self.deployments[id]?.backoff
            let unavailable = backoff.flatMap { $0.isUnhealthy && replicas.isEmpty ? "replicas failed to start \($0.consecutiveFailures) time(s) in a row; last: \($0.lastError)" : nil }
            return DeploymentRoute(
                id: id, maxOngoingRequests: deployment.maxOngoingRequests, maxQueuedRequests: deployment.maxQueuedRequests,
                replicas: replicas, unavailable: unavailable)
        }
        let applications = self.config.applications.map { app in
            let ingress = app.ingress
            return ApplicationRoute(
                name: app.name,
                routePrefix: app.routePrefix,
                ingress: route(ingress, of: app),
                others: app.deployments.filter { $0.name != ingress.name }.map { route($0, of: app) },
                idempotent: app.idempotent
            )
        }
        let table = RouteTable(
            applications: applications,
            requestTimeout: self.config.httpOptions.requestTimeoutS.map { .milliseconds(Int($0 * 1000)) },
            maxBodyBytes: self.config.httpOptions.maxBodyBytes,
            servesHTTP: self.config.proxyLocation != .disabled
        )
        let settings = RoutePublisher.Settings(
            proxyLocation: self.config.proxyLocation, httpHost: self.config.httpOptions.host, httpPort: self.config.httpOptions.port)
        guard let (version, update) = self.routes.publish(table, settings: settings, madeAtUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
        else { return }
        self.logger.debug(
            "route table published",
            metadata: ["version": "\(version)", "applications": "\(table.applications.count)", "nodes": "\(self.nodes.count)"])
        self.ingress.update(table, version: version)
        // Every node's proxy gets the same change, in the order made (one control stream each).
        self.metrics.publishedTable(bytes: self.sendToLiveNodes(.routes(update)))
    }
}
