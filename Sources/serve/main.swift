import ArgumentParser
import ServeCore

/// `serve`: filled in by the "working cluster" issue; today it answers `--help` and `--version`.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "swift-serve serve (not yet implemented).",
        version: ServeVersion.string
    )

    func run() throws {
        throw ValidationError("serve is not implemented yet; see the README.")
    }
}

ServeCommand.main()
