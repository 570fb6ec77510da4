import ArgumentParser
import ServeCore

/// `serve-worker`: filled in by the "working cluster" issue; today it answers `--help` and `--version`.
struct ServeWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-worker",
        abstract: "swift-serve serve-worker (not yet implemented).",
        version: ServeVersion.string
    )

    func run() throws {
        throw ValidationError("serve-worker is not implemented yet; see the README.")
    }
}

ServeWorkerCommand.main()
