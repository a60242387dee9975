// The Java 17 HttpClient of the matrix, no proxy settings of its own (compiled by the test).
// Run by matrix.sh; prints the RESULT lines described there.
import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Matrix {
    public static void main(String[] args) {
        HttpClient.Builder builder = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(20));
        String proxy = System.getenv("HTTPS_PROXY");
        String user = proxy == null ? null : URI.create(proxy).getUserInfo();
        if (user != null) {
            // A grant in the proxy URL (egress env --grant): Java reads no proxy credentials from
            // system properties, so it takes what egress env says it needs, an Authenticator and
            // Basic allowed for tunnels.
            System.setProperty("jdk.http.auth.tunneling.disabledSchemes", "");
            String[] parts = user.split(":", 2);
            builder.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    return getRequestorType() != RequestorType.PROXY ? null
                        : new PasswordAuthentication(parts[0], parts.length > 1 ? parts[1].toCharArray() : new char[0]);
                }
            });
        }
        HttpClient client = builder.build();
        for (String kind : new String[] {"allow", "block", "host"}) {
            String url = System.getenv("MATRIX_" + kind.toUpperCase()).replace("{client}", "java");
            try {
                HttpResponse<String> r = client.send(
                    HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(20))
                        .header("Authorization", "Bearer sandbox-guess").build(),
                    HttpResponse.BodyHandlers.ofString());
                Matcher m = Pattern.compile("\"reason\": *\"([^\"]*)\"").matcher(r.body());
                System.out.println("RESULT java " + kind + " " + r.statusCode() + " "
                    + r.headers().firstValue("x-egress-blocked").orElse("-") + " "
                    + (m.find() ? m.group(1) : "-") + " " + (r.version() == HttpClient.Version.HTTP_2 ? "2" : "1.1"));
            } catch (Exception e) {
                System.out.println("RESULT java " + kind + " error " + e);
            }
        }
    }
}
