import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// The controller's config: deploys (a rolling update where the spec changed, in place where only
/// `user_config` or `max_ongoing_requests` did), targets, and the hold after a head restart.
extension Controller {
    // MARK: config

    /// Replaces the whole config (apps left out are deleted), as Ray's PUT does. The config was
    /// validated already: nothing here can refuse it.
    public func deploy(_ config: ServeConfig) async {
        self.config = config
        var seen = Set<DeploymentID>()
        var byDeployment: [DeploymentID: [ReplicaEntry]]?
        for app in config.applications {
            self.deletingApps.remove(app.name)
            for deployment in app.deployments {
                let id = DeploymentID(app: app.name, name: deployment.name)
                seen.insert(id)
                if var runtime = self.deployments[id] {
                    let before = runtime.target
                    let oldConfig = runtime.config
                    runtime.config = deployment
                    runtime.target = self.target(for: deployment, previous: oldConfig, current: before)
                    if oldConfig.autoscaling?.lookBackPeriodS != deployment.autoscaling?.lookBackPeriodS {
                        runtime.metrics = MetricsWindow(lookBack: deployment.autoscaling?.lookBackPeriodS ?? 30)
                    }
                    if oldConfig.specVersion != deployment.specVersion {
                        runtime.backoff.reset()
                    }
                    self.deployments[id] = runtime
                    if before != runtime.target {
                        self.record(.scale, id, before: before, after: runtime.target, reason: "config changed num_replicas")
                    }
                    if oldConfig.specVersion == deployment.specVersion {
                        if byDeployment == nil { byDeployment = self.replicasByDeployment() }
                        self.reconfigureLightweight(id, from: oldConfig, to: deployment, replicas: byDeployment?[id] ?? [])
                    } else {
                        self.record(.deploy, id, before: before, after: runtime.target, reason: "code or resources changed: rolling update")
                    }
                } else {
                    let target = deployment.initialReplicaCount
                    self.deployments[id] = DeploymentRuntime(
                        config: deployment,
                        app: app.name,
                        target: target,
                        metrics: MetricsWindow(lookBack: deployment.autoscaling?.lookBackPeriodS ?? 30)
                    )
                    self.record(.deploy, id, before: 0, after: target, reason: "deployed")
                }
            }
        }
        for id in self.deployments.keys where !seen.contains(id) {
            let before = self.deployments[id]?.target ?? 0
            self.deployments[id] = nil
            self.deletingApps.insert(id.app)
            self.record(.scale, id, before: before, after: 0, reason: "deleted")
        }
        for warning in ConfigParser.warnings(for: config) {
            self.record(.warning, warning.deployment, before: 0, after: 0, reason: "config warning: \(warning)")
        }
        await self.reconcile()
    }

    /// The target for a deployment whose config changed: a new fixed count applies at once; an
    /// autoscaled one keeps its current size within its new bounds.
    func target(for deployment: DeploymentConfig, previous: DeploymentConfig, current: Int) -> Int {
        if let autoscaling = deployment.autoscaling {
            if previous.autoscaling == nil { return deployment.initialReplicaCount }
            return min(max(current, autoscaling.minReplicas), autoscaling.maxReplicas)
        }
        return deployment.initialReplicaCount
    }

    /// `user_config` and `max_ongoing_requests` change in place on running replicas.
    func reconfigureLightweight(_ id: DeploymentID, from old: DeploymentConfig, to new: DeploymentConfig, replicas: [ReplicaEntry]) {
        guard old.userConfig != new.userConfig || old.maxOngoingRequests != new.maxOngoingRequests else { return }
        var change = PBReconfigureReplica()
        if old.userConfig != new.userConfig {
            change.userConfigJson = Data((new.userConfig ?? .null).jsonString().utf8)
        }
        if old.maxOngoingRequests != new.maxOngoingRequests {
            change.maxOngoingRequests = UInt32(new.maxOngoingRequests)
        }
        for entry in replicas where entry.record.state != .stopping {
            change.replicaID = entry.record.id
            change.specVersion = entry.record.specVersion
            self.send(to: entry.record.nodeID, .reconfigureReplica(change))
        }
    }

    /// Sets a deployment's replica target (the application autoscaler's entry point).
    public func setTarget(_ id: DeploymentID, _ target: Int, reason: String) async {
        guard var runtime = self.deployments[id], runtime.target != target else { return }
        self.record(.scale, id, before: runtime.target, after: target, reason: reason)
        runtime.target = target
        self.deployments[id] = runtime
        await self.reconcile()
    }

    /// Starts no replica for `grace` (see `HeadOptions.reconnectGrace`) or until the next
    /// deploy; the 1 s reconcile tick starts what is still missing once it has passed.
    func holdStarts(for grace: Duration) {
        self.holdStartsUntil = .now + grace
    }

    /// While holding after a restart: an autoscaled deployment's target starts again at its
    /// initial count, but the replicas the workers kept running are what the autoscaler had
    /// decided. The target keeps them (within the deployment's bounds) instead of scaling them
    /// down the moment they are adopted.
    func keepAdoptedReplicas() {
        guard self.holdStartsUntil != nil else { return }
        let runningByDeployment = self.currentSpecCount(in: [.running])
        for (id, runtime) in self.deployments {
            guard let autoscaling = runtime.config.autoscaling else { continue }
            let running = runningByDeployment[id] ?? 0
            let target = min(max(runtime.target, running), autoscaling.maxReplicas)
            guard target != runtime.target else { continue }
            self.record(.autoscale, id, before: runtime.target, after: target, reason: "kept the \(running) replicas workers still ran after a head restart")
            self.deployments[id]?.target = target
        }
    }

    /// A deploy by the user ends the hold: what it asks for starts now.
    func stopHoldingStarts() {
        self.holdStartsUntil = nil
    }
}
