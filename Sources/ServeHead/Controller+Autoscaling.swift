import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// The application autoscaler's pass and the dashboard's timeline samples.
extension Controller {
    // MARK: the application autoscaler

    /// Seconds on the process's monotonic clock (the policy's time input).
    static func seconds(_ instant: ContinuousClock.Instant) -> Double {
        MonotonicTime.seconds(instant)
    }

    /// One autoscaler pass (every 100 ms, like Ray's control loop): each autoscaled deployment's
    /// window gets the requests waiting at the router, and `AutoscalingPolicy.decide` (pure, in
    /// ServeCore) proposes a target; a change is applied and recorded as an event. Once a second
    /// it also samples every deployment for the dashboard's timeline (`DeploymentHistory`).
    public func autoscale(waitingAtRouter: [DeploymentID: Int], now instant: ContinuousClock.Instant = .now) async {
        let now = Self.seconds(instant)
        // Every proxy's waiting requests count: the head's own and each node's (its heartbeat,
        // summed as they arrive: `setWaiting`).
        let waitingAtRouter = waitingAtRouter.merging(self.waitingAtNodes, uniquingKeysWith: +)
        let autoscaled = self.deployments.compactMap { $0.value.config.autoscaling == nil ? nil : $0.key }
        var changed = false
        if !autoscaled.isEmpty {
            let runningByDeployment = self.currentSpecCount(in: [.running])
            for id in autoscaled {
                // In place: a copy taken out of the dictionary would copy its metrics window
                // (one series per replica) on every tick.
                guard let (before, decision) = self.deployments[id]?.autoscale(
                    waiting: waitingAtRouter[id] ?? 0, running: runningByDeployment[id] ?? 0, now: now)
                else { continue }
                let event = self.record(.autoscale, id, before: before, after: decision.target, reason: decision.reason)
                self.deployments[id]?.lastAutoscale = event
                changed = true
            }
        }
        if self.history.isDue(now: now) { self.sampleHistory(waitingAtRouter: waitingAtRouter, now: now) }
        if changed { await self.reconcile() }
    }

    /// Requests waiting at a node's routers, as its last heartbeat said (kept summed over the
    /// nodes in `waitingAtNodes`, so the 100 ms tick does not visit every node).
    func setWaiting(_ waiting: [DeploymentID: Int], of nodeID: String) {
        let before = self.nodes[nodeID]?.waiting ?? [:]
        if waiting.isEmpty && before.isEmpty { return }
        for (id, count) in before {
            let left = (self.waitingAtNodes[id] ?? 0) - count
            self.waitingAtNodes[id] = left > 0 ? left : nil
        }
        for (id, count) in waiting { self.waitingAtNodes[id, default: 0] += count }
        self.nodes[nodeID]?.waiting = waiting
    }

    /// One sample of every deployment for the timeline (once per `DeploymentHistory`
    /// interval, from the autoscaler's tick).
    func sampleHistory(waitingAtRouter: [DeploymentID: Int], now: Double) {
        let states = self.replicaStates()
        let ongoing = self.ongoingRequests()
        var readings: [DeploymentID: DeploymentHistory.Reading] = [:]
        for (id, runtime) in self.deployments {
            readings[id] = .init(
                target: runtime.target, running: states[id]?[.running] ?? 0, ongoing: ongoing[id] ?? 0,
                queued: waitingAtRouter[id] ?? 0)
        }
        self.history.sample(readings, now: now)
    }
}
