import Foundation
import ServeCore
import ServeHead
import ServeWorker

/// The foreground life of a head process (`serve-head`, `serve run`): start, say where
/// everything is, deploy a config if given, then stop cleanly on SIGINT/SIGTERM or
/// `POST /api/serve/shutdown`.
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
        func say(_ line: String) { out.write(Data((line + "\n").utf8)) }
        say("\(banner) running")
        say("  cluster port  \(options.clusterHost):\(head.clusterPort)   (serve-worker --address HOST:\(head.clusterPort))")
        say("  HTTP ingress  http://\(displayHost(options.httpHost)):\(head.httpPort)")
        say("  admin API     http://\(displayHost(options.adminHost)):\(head.adminPort)")
        say("  token         \(head.tokenWasGiven ? "(given)" : head.token)")
        say("  state dir     \(head.store.directory.path)")
        if let restored = head.restoredConfig {
            for app in restored.applications {
                say("  restored \(app.name) from the state dir: curl http://\(displayHost(options.httpHost)):\(head.httpPort)\(app.routePrefix)")
            }
        }
        if let nodes = options.nodeAutoscaling {
            say("  node autoscaler  \(nodes.config.provider.kind) provider; node types \(nodes.config.nodeTypes.map(\.name).joined(separator: ", "))")
        }
        if let config {
            for app in config.applications {
                say("  deployed \(app.name): curl http://\(displayHost(options.httpHost)):\(head.httpPort)\(app.routePrefix)")
            }
        }
        let signals = SignalWatcher(signals: [SIGINT, SIGTERM]) { head.requestShutdown() }
        await head.waitUntilShutdownRequested()
        say("\(banner): shutting down (draining replicas)")
        await cluster.shutdown()
        withExtendedLifetime(signals) {}
        say("\(banner): stopped")
    }

    static func displayHost(_ host: String) -> String {
        host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host
    }
}

public struct ServeProcessError: Error, CustomStringConvertible {
    public var description: String
}

