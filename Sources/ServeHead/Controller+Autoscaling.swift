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
        // Every proxy's waiting requests count: the head's own and each node's (its heartbeat).
        var waitingAtRouter = waitingAtRouter
        for node in self.nodes.values where node.state != .dead {
            for (id, count) in node.waiting { waitingAtRouter[id, default: 0] += count }
        }
        var changed = false
        let runningByDeployment = self.currentSpecCount(in: [.running])
        for (id, var runtime) in self.deployments {
            guard let config = runtime.config.autoscaling else { continue }
            runtime.metrics.record(source: "router", value: Double(waitingAtRouter[id] ?? 0), at: now)
            runtime.metrics.expire(now: now, staleAfter: max(2 * config.metricsIntervalS, 10, 4 * Self.heartbeatInterval))
            let running = runningByDeployment[id] ?? 0
            let panicOngoing = config.panicWindowS.flatMap {
                runtime.metrics.aggregate(now: now, aggregation: config.aggregationFunction, over: $0)
            }
            let decision = AutoscalingPolicy.decide(
                config: config,
                currentTarget: runtime.target,
                running: running,
                totalOngoing: runtime.metrics.aggregate(now: now, aggregation: config.aggregationFunction),
                latestOngoing: runtime.metrics.latest(),
                now: now,
                state: &runtime.autoscaling,
                panicOngoing: panicOngoing
            )
            if decision.target != runtime.target {
                runtime.lastAutoscale = self.record(.autoscale, id, before: runtime.target, after: decision.target, reason: decision.reason)
                runtime.target = decision.target
                changed = true
            }
            self.deployments[id] = runtime
        }
        if self.history.isDue(now: now) { self.sampleHistory(waitingAtRouter: waitingAtRouter, now: now) }
        if changed { await self.reconcile() }
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
