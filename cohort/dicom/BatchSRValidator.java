// Runs PixelMed's DicomSRValidator over many files in one JVM (its own main takes exactly one file
// and silently prints usage for more). Each file's output follows a line "=== <path>".
import com.pixelmed.validate.DicomSRValidator;

public class BatchSRValidator {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String path : args) {
            System.out.println("=== " + path);
            try {
                System.out.print(validator.validate(path));
            } catch (Exception e) {
                System.out.println("Error: validator failed: " + e);
            }
            System.out.println();
        }
    }
}
