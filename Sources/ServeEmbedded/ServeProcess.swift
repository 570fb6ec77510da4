import Foundation
import ServeCore
import ServeHead
import ServeWorker

/// The foreground life of a head process (`serve-head`, `serve run`): start, say where
/// everything is, deploy a config if given, then run its parts in one `ServiceGroup` until
/// SIGTERM, SIGINT or `POST /api/serve/shutdown` stops them gracefully (`HeadRuntime.run` says
/// in what order). A second signal changes nothing: the shutdown already under way goes on.
public enum ServeProcess {
    public static func runHead(
        options: HeadOptions,
        resources: EmbeddedCluster.LocalResources,
        configPath: String?,
        clusterConfigPath: String? = nil,
        banner: String
    ) async throws {
        var options = options
        // Parse the config before starting anything: a bad one is refused whole.
        var config: ServeConfig?
        if let configPath {
            let text = try String(contentsOfFile: configPath, encoding: .utf8)
            do {
                config = try ConfigParser.parse(text, knownHandlers: options.registry.names)
            } catch {
                throw ServeProcessError(description: "\(configPath) was refused:\n\(error)")
            }
        }
        options.config = config
        // Deployed, but not working as meant (also in the events).
        for warning in config.map(ConfigParser.warnings(for:)) ?? [] {
            FileHandle.standardError.write(Data("\(banner): warning: \(warning)\n".utf8))
        }
        if let clusterConfigPath {
            let text = try String(contentsOfFile: clusterConfigPath, encoding: .utf8)
            do {
                options.nodeAutoscaling = .from(try ClusterConfigParser.parse(text))
            } catch {
                throw ServeProcessError(description: "\(clusterConfigPath) was refused:\n\(error)")
            }
        }
        let cluster = try await EmbeddedCluster.start(head: options, resources: resources)
        let head = cluster.head
        let out = FileHandle.standardOutput
        @Sendable func say(_ line: String) { out.write(Data((line + "\n").utf8)) }
        // Said once the head runs: its signals are trapped by then.
        var lines = ["\(banner) running"]
        lines.append("  cluster port  \(options.clusterHost):\(head.clusterPort)   (serve-worker --address HOST:\(head.clusterPort))")
        lines.append("  HTTP ingress  http://\(displayHost(options.httpHost)):\(head.httpPort)")
        lines.append("  admin API     http://\(displayHost(options.adminHost)):\(head.adminPort)")
        lines.append("  token         \(head.tokenWasGiven ? "(given)" : head.token)")
        lines.append("  state dir     \(head.store.directory.path)")
        if let restored = head.restoredConfig {
            for app in restored.applications {
                lines.append("  restored \(app.name) from the state dir: curl http://\(displayHost(options.httpHost)):\(head.httpPort)\(app.routePrefix)")
            }
        }
        if let nodes = options.nodeAutoscaling {
            lines.append("  node autoscaler  \(nodes.config.provider.kind) provider; node types \(nodes.config.nodeTypes.map(\.name).joined(separator: ", "))")
        }
        if let config {
            for app in config.applications {
                lines.append("  deployed \(app.name): curl http://\(displayHost(options.httpHost)):\(head.httpPort)\(app.routePrefix)")
            }
        }
        let whereEverythingIs = lines.joined(separator: "\n")
        try await cluster.run(
            gracefulShutdownSignals: [.sigterm, .sigint],
            onReady: { say(whereEverythingIs) },
            onShutdown: { say("\(banner): shutting down (draining replicas)") }
        )
        say("\(banner): stopped")
    }

    static func displayHost(_ host: String) -> String {
        host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host
    }
}

public struct ServeProcessError: Error, CustomStringConvertible {
    public var description: String
}

