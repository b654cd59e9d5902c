from clicklake.cli import main

main()
