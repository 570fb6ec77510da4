/// The version every binary reports with `--version`.
public enum ServeVersion {
    public static let string = "0.1.0"
}
