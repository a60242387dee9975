// The Java 17 HttpClient of the `egress exec` matrix, no proxy settings (compiled by the test).
// Run inside the step by matrix.sh; prints the RESULT lines described there.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Matrix {
    public static void main(String[] args) {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(20)).build();
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
