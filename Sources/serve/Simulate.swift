import ArgumentParser
import Foundation
import ServeCore
import ServeHead

/// `serve simulate`: replays a load trace through the real autoscaling policy on a virtual
/// clock (`AutoscalingSimulator`), without a cluster, and prints the replica timeline.
struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a load trace through the autoscaling policy and print the replica timeline (no cluster needed).",
        discussion: """
            The trace is a CSV file: a header line naming its form, then one row per \
            change. Each row holds until the next row's time; the last row's time ends \
            the run (or --duration).

            Closed loop, N clients each sending its next request as soon as the \
            previous one is answered (here: idle 2 s, 16 clients for 20 s, idle 30 s):

              time_s,clients,service_ms
              0,0,100
              2,16,100
              22,0,100
              52,0,100

            Open loop, requests arriving evenly spaced: the header \
            time_s,rate_rps,service_ms.

            The deployment is simulated with its max_ongoing_requests, \
            max_queued_requests and autoscaling_config; the controller's loop (every \
            0.1 s) and the replicas' reports (every 0.5 s) are driven as in a real head.
            """
    )

    @Option(help: "The config file (YAML or JSON), as for `serve deploy`.") var config: String
    @Option(help: "The load trace (CSV, described above).") var load: String
    @Option(help: "The application (default: any).") var app: String?
    @Option(help: "The deployment (default: the first autoscaled one).") var deployment: String?
    @Option(
        name: .customLong("startup-s"),
        help: "Seconds from a scale-up decision to the replica running (default: 2 for command replicas, 0 for Swift handlers)."
    )
    var startupS: Double?
    @Option(help: "Seconds between timeline rows.") var step: Double = 1
    @Option(help: "End of the run in seconds (default: the trace's last row).") var duration: Double?
    @Option(help: "Also write the timeline as an SVG chart to this file.") var plot: String?
    @Flag(help: "Print the rows as JSON instead of the table and summary.") var json = false

    func validate() throws {
        guard self.step.isFinite, self.step > 0 else { throw ValidationError("--step must be a positive number of seconds") }
        if let startup = self.startupS, !(startup.isFinite && startup >= 0) {
            throw ValidationError("--startup-s must be 0 or more seconds")
        }
        if let duration = self.duration, !(duration.isFinite && duration > 0) {
            throw ValidationError("--duration must be a positive number of seconds")
        }
    }

    func run() throws {
        do {
            try self.simulate()
        } catch let error as SimulateError {
            FileHandle.standardError.write(Data("serve simulate: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }

    private func simulate() throws {
        let configText = try Self.read(self.config, what: "config")
        let parsed: ServeConfig
        do {
            parsed = try ConfigParser.parse(configText, knownHandlers: HeadOptions().registry.names)
        } catch {
            throw SimulateError(message: "\(self.config) is not a valid config:\n\(error)")
        }
        let (appName, chosen) = try self.choose(in: parsed)

        var trace: LoadTrace
        do {
            trace = try LoadTrace.parse(csv: try Self.read(self.load, what: "load trace"))
        } catch let error as LoadTraceError {
            throw SimulateError(message: "\(self.load): \(error)")
        }
        if let duration = self.duration { trace.duration = duration }
        guard trace.duration > 0 else {
            throw SimulateError(
                message: "\(self.load): the run would last 0 s (the last row's time ends it): add a final row or pass --duration"
            )
        }

        let startup = self.startupS ?? (chosen.command != nil ? 2 : 0)
        let simulator = AutoscalingSimulator(deployment: chosen, trace: trace, startup: startup)
        let result = simulator.simulate(step: self.step)

        if let plot = self.plot {
            let title = "serve simulate: \(appName)/\(chosen.name), \((self.load as NSString).lastPathComponent)"
            do {
                // Drawn from rows at tick resolution (the same run), so steps show where they happen.
                let fine = simulator.run(step: simulator.tick)
                try SimulationChart.chart(fine, mode: trace.mode, title: title).svg()
                    .write(toFile: plot, atomically: true, encoding: .utf8)
            } catch {
                throw SimulateError(message: "cannot write \(plot): \(error.localizedDescription)")
            }
        }
        if self.json {
            print(SimulationReport.json(result.rows, mode: trace.mode))
            return
        }
        print(Self.describe(appName: appName, chosen, trace: trace, startup: startup))
        print()
        print(SimulationReport.table(result.rows, mode: trace.mode))
        if !result.decisions.isEmpty {
            print()
            print("target changes:")
            for decision in result.decisions {
                print("  t=\(SimulationFormat.fixed(decision.time, 1)) s  \(decision.before) → \(decision.after)  \(decision.reason)")
            }
        }
        print()
        print("summary: \(result.summary.line)")
        if let plot = self.plot { print("wrote \(plot)") }
    }

    /// The application and deployment to simulate.
    private func choose(in config: ServeConfig) throws -> (String, DeploymentConfig) {
        var apps = config.applications
        if let name = self.app {
            guard let app = config.application(named: name) else {
                let known = config.applications.map(\.name).joined(separator: ", ")
                throw SimulateError(message: "\(self.config) has no application '\(name)' (it has: \(known))")
            }
            apps = [app]
        }
        let candidates = apps.flatMap { app in app.deployments.map { (app.name, $0) } }
        if let name = self.deployment {
            let matches = candidates.filter { $0.1.name == name }
            guard let first = matches.first else {
                let known = candidates.map { "\($0.0)/\($0.1.name)" }.joined(separator: ", ")
                throw SimulateError(message: "no deployment '\(name)' in \(self.app.map { "application '\($0)'" } ?? self.config) (there are: \(known))")
            }
            if matches.count > 1 {
                let where_ = matches.map(\.0).joined(separator: ", ")
                throw SimulateError(message: "deployment '\(name)' is in several applications (\(where_)): pass --app")
            }
            return first
        }
        guard let first = candidates.first(where: { $0.1.autoscaling != nil }) else {
            throw SimulateError(
                message: "no autoscaled deployment in \(self.app.map { "application '\($0)'" } ?? self.config) "
                    + "(give one an autoscaling_config or num_replicas: auto, or name a fixed one with --deployment)"
            )
        }
        return first
    }

    private static func describe(appName: String, _ deployment: DeploymentConfig, trace: LoadTrace, startup: Double) -> String {
        let what = deployment.handler.map { "handler \($0)" } ?? "command \(deployment.command?.first ?? "?")"
        var lines = [
            "deployment \(appName)/\(deployment.name) (\(what)): max_ongoing_requests \(deployment.maxOngoingRequests), "
                + "max_queued_requests \(deployment.maxQueuedRequests)",
        ]
        if let a = deployment.autoscaling {
            let f = SimulationFormat.seconds
            lines.append(
                "autoscaling: replicas \(a.minReplicas)…\(a.maxReplicas), target_ongoing_requests \(f(a.targetOngoingRequests)), "
                    + "upscale_delay_s \(f(a.upscaleDelayS)), downscale_delay_s \(f(a.downscaleDelayS)), "
                    + "look_back_period_s \(f(a.lookBackPeriodS)), \(a.aggregationFunction)"
            )
        } else {
            lines.append("not autoscaled: \(deployment.initialReplicaCount) replica(s) throughout")
        }
        let form = trace.mode == .clients ? "closed loop (clients)" : "open loop (requests/s)"
        lines.append(
            "trace: \(form), \(trace.rows.count) row(s), \(SimulationFormat.seconds(trace.duration)) s; "
                + "replica start-up \(SimulationFormat.seconds(startup)) s"
        )
        return lines.joined(separator: "\n")
    }

    private static func read(_ path: String, what: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw SimulateError(message: "\(what) \(path): no such file")
        }
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw SimulateError(message: "cannot read \(what) \(path): \(error.localizedDescription)")
        }
    }
}

private struct SimulateError: Error {
    var message: String
}
